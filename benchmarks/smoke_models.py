"""The smallest SAM and BERT the benchmarks build for their ``--smoke`` runs (random weights, nothing downloaded).

Imported by the scripts in this folder, so that every smoke run exercises the same model: a 64 px input, two
ViT blocks of width 32 (the second global), a decoder of width 32, and a two-layer BERT of width 32.
"""

from __future__ import annotations

# DITSamConfig fields of the smallest custom backbone (window size left to the caller's layout).
SMOKE_SAM = dict(
    backbone="custom",
    embed_dim=32,
    depth=2,
    num_heads=2,
    global_attn_indexes=[1],
    image_size=64,
    prompt_embed_dim=32,
    decoder_mlp_dim=64,
    decoder_num_heads=2,
)
# transformers.BertConfig fields of the smallest text model.
SMOKE_BERT = dict(
    vocab_size=200,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
)
