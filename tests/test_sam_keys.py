"""Official SAM ViT-B key names load strictly; the decoder's text-padding key mask behaves."""

from __future__ import annotations

import pytest
import torch

from ditsam.model.sam.mask_decoder import MaskDecoder
from ditsam.model.sam.prompt_encoder import PromptEncoder
from ditsam.model.sam.transformer import TwoWayTransformer

# sam_vit_b_01ec64.pth: prompt encoder and mask decoder sizes.
EMBED = 256
MASK_IN_CHANS = 16
DEPTH = 2
MLP = 2048
HEADS = 8
IOU_HIDDEN = 256
NUM_MASK_TOKENS = 4  # 3 multimask outputs + 1
DOWNSAMPLED = EMBED // 2  # width of the token<->image cross-attentions


def _attention_shapes(prefix: str, internal: int) -> dict[str, tuple[int, ...]]:
    shapes = {f"{prefix}.{proj}.weight": (internal, EMBED) for proj in ("q_proj", "k_proj", "v_proj")}
    shapes |= {f"{prefix}.{proj}.bias": (internal,) for proj in ("q_proj", "k_proj", "v_proj")}
    return shapes | {f"{prefix}.out_proj.weight": (EMBED, internal), f"{prefix}.out_proj.bias": (EMBED,)}


def _linear_shapes(prefix: str, n_out: int, n_in: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (n_out, n_in), f"{prefix}.bias": (n_out,)}


def official_prompt_encoder_shapes() -> dict[str, tuple[int, ...]]:
    """Every `prompt_encoder.*` key of sam_vit_b (prefix stripped) with its shape."""
    shapes: dict[str, tuple[int, ...]] = {"pe_layer.positional_encoding_gaussian_matrix": (2, EMBED // 2)}
    shapes |= {f"point_embeddings.{i}.weight": (1, EMBED) for i in range(4)}
    shapes |= {"not_a_point_embed.weight": (1, EMBED), "no_mask_embed.weight": (1, EMBED)}
    quarter = MASK_IN_CHANS // 4
    shapes |= {
        "mask_downscaling.0.weight": (quarter, 1, 2, 2),
        "mask_downscaling.0.bias": (quarter,),
        "mask_downscaling.1.weight": (quarter,),
        "mask_downscaling.1.bias": (quarter,),
        "mask_downscaling.3.weight": (MASK_IN_CHANS, quarter, 2, 2),
        "mask_downscaling.3.bias": (MASK_IN_CHANS,),
        "mask_downscaling.4.weight": (MASK_IN_CHANS,),
        "mask_downscaling.4.bias": (MASK_IN_CHANS,),
        "mask_downscaling.6.weight": (EMBED, MASK_IN_CHANS, 1, 1),
        "mask_downscaling.6.bias": (EMBED,),
    }
    return shapes


def official_mask_decoder_shapes() -> dict[str, tuple[int, ...]]:
    """Every `mask_decoder.*` key of sam_vit_b (prefix stripped) with its shape."""
    shapes: dict[str, tuple[int, ...]] = {
        "iou_token.weight": (1, EMBED),
        "mask_tokens.weight": (NUM_MASK_TOKENS, EMBED),
    }
    for i in range(DEPTH):
        layer = f"transformer.layers.{i}"
        shapes |= _attention_shapes(f"{layer}.self_attn", EMBED)
        shapes |= _attention_shapes(f"{layer}.cross_attn_token_to_image", DOWNSAMPLED)
        shapes |= _attention_shapes(f"{layer}.cross_attn_image_to_token", DOWNSAMPLED)
        shapes |= _linear_shapes(f"{layer}.mlp.lin1", MLP, EMBED)
        shapes |= _linear_shapes(f"{layer}.mlp.lin2", EMBED, MLP)
        for norm in range(1, 5):
            shapes |= {f"{layer}.norm{norm}.weight": (EMBED,), f"{layer}.norm{norm}.bias": (EMBED,)}
    shapes |= _attention_shapes("transformer.final_attn_token_to_image", DOWNSAMPLED)
    shapes |= {"transformer.norm_final_attn.weight": (EMBED,), "transformer.norm_final_attn.bias": (EMBED,)}
    shapes |= {
        # ConvTranspose2d weights are (in, out, k, k).
        "output_upscaling.0.weight": (EMBED, EMBED // 4, 2, 2),
        "output_upscaling.0.bias": (EMBED // 4,),
        "output_upscaling.1.weight": (EMBED // 4,),
        "output_upscaling.1.bias": (EMBED // 4,),
        "output_upscaling.3.weight": (EMBED // 4, EMBED // 8, 2, 2),
        "output_upscaling.3.bias": (EMBED // 8,),
    }
    for i in range(NUM_MASK_TOKENS):
        mlp = f"output_hypernetworks_mlps.{i}.layers"
        shapes |= _linear_shapes(f"{mlp}.0", EMBED, EMBED)
        shapes |= _linear_shapes(f"{mlp}.1", EMBED, EMBED)
        shapes |= _linear_shapes(f"{mlp}.2", EMBED // 8, EMBED)
    shapes |= _linear_shapes("iou_prediction_head.layers.0", IOU_HIDDEN, EMBED)
    shapes |= _linear_shapes("iou_prediction_head.layers.1", IOU_HIDDEN, IOU_HIDDEN)
    shapes |= _linear_shapes("iou_prediction_head.layers.2", NUM_MASK_TOKENS, IOU_HIDDEN)
    return shapes


def _random_state(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {key: torch.randn(shape, generator=generator) for key, shape in shapes.items()}


def _vit_b_decoder() -> MaskDecoder:
    transformer = TwoWayTransformer(depth=DEPTH, embedding_dim=EMBED, num_heads=HEADS, mlp_dim=MLP)
    return MaskDecoder(
        transformer_dim=EMBED,
        transformer=transformer,
        num_multimask_outputs=NUM_MASK_TOKENS - 1,
        iou_head_depth=3,
        iou_head_hidden_dim=IOU_HIDDEN,
    )


def test_official_prompt_encoder_keys_load_strictly() -> None:
    module = PromptEncoder(
        embed_dim=EMBED, image_embedding_size=(64, 64), input_image_size=(1024, 1024), mask_in_chans=MASK_IN_CHANS
    )
    state = _random_state(official_prompt_encoder_shapes(), seed=0)
    module.load_state_dict(state, strict=True)
    assert torch.equal(module.state_dict()["point_embeddings.3.weight"], state["point_embeddings.3.weight"])


def test_official_mask_decoder_keys_load_strictly() -> None:
    module = _vit_b_decoder()
    state = _random_state(official_mask_decoder_shapes(), seed=1)
    module.load_state_dict(state, strict=True)
    key = "iou_prediction_head.layers.2.bias"
    assert torch.equal(module.state_dict()[key], state[key])


def test_prompt_encoder_without_prompts_needs_a_batch_size() -> None:
    module = PromptEncoder(embed_dim=16, image_embedding_size=(4, 4), input_image_size=(64, 64), mask_in_chans=4)
    sparse, dense = module(None, None, None, batch_size=3)
    assert sparse.shape == (3, 0, 16)
    assert dense.shape == (3, 16, 4, 4)
    with pytest.raises(ValueError, match="batch_size"):
        module(None, None, None)


# Small decoder for the key-mask tests.
SMALL = 32
GRID = 4
NUM_TEXT = 5


def _small_decoder() -> MaskDecoder:
    torch.manual_seed(0)
    transformer = TwoWayTransformer(depth=3, embedding_dim=SMALL, num_heads=4, mlp_dim=64)
    return MaskDecoder(transformer_dim=SMALL, transformer=transformer, iou_head_hidden_dim=16).eval()


def _decode(
    decoder: MaskDecoder, sparse: torch.Tensor, token_key_mask: torch.Tensor | None, multimask: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    batch = sparse.shape[0]
    return decoder(
        image_embeddings=torch.randn(batch, SMALL, GRID, GRID, generator=generator),
        image_pe=torch.randn(1, SMALL, GRID, GRID, generator=generator),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=torch.randn(batch, SMALL, GRID, GRID, generator=generator),
        multimask_output=multimask,
        token_key_mask=token_key_mask,
    )


@torch.no_grad()
def test_all_true_key_mask_matches_no_mask() -> None:
    decoder = _small_decoder()
    sparse = torch.randn(2, NUM_TEXT, SMALL, generator=torch.Generator().manual_seed(2))
    for multimask in (True, False):
        expected = _decode(decoder, sparse, None, multimask)
        got = _decode(decoder, sparse, torch.ones(2, NUM_TEXT, dtype=torch.bool), multimask)
        for ours, reference in zip(got, expected, strict=True):
            torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)


@torch.no_grad()
def test_masked_tokens_do_not_influence_the_output() -> None:
    decoder = _small_decoder()
    generator = torch.Generator().manual_seed(3)
    sparse = torch.randn(2, NUM_TEXT, SMALL, generator=generator)
    # Different amounts of padding per row, as in a batch of sentences.
    keep = torch.tensor([[True, True, True, False, False], [True, True, True, True, False]])
    reference = _decode(decoder, sparse, keep)

    other_padding = torch.where(keep[..., None], sparse, 100.0 * torch.randn(sparse.shape, generator=generator))
    for ours, expected in zip(_decode(decoder, other_padding, keep), reference, strict=True):
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)

    # The mask is not a no-op: attending to the padding changes the result.
    unmasked = _decode(decoder, sparse, None)
    assert (unmasked[0] - reference[0]).abs().max() > 1e-3


@torch.no_grad()
def test_masking_equals_dropping_the_padded_tokens() -> None:
    decoder = _small_decoder()
    sparse = torch.randn(1, NUM_TEXT, SMALL, generator=torch.Generator().manual_seed(4))
    keep = torch.tensor([[True, True, False, True, False]])
    masked = _decode(decoder, sparse, keep)
    dropped = _decode(decoder, sparse[:, keep[0]], None)
    for ours, expected in zip(masked, dropped, strict=True):
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)


def test_every_decoder_parameter_gets_a_gradient() -> None:
    decoder = _small_decoder().train()
    sparse = torch.randn(2, NUM_TEXT, SMALL, requires_grad=True)
    keep = torch.tensor([[True, True, True, False, False], [True] * NUM_TEXT])
    masks, iou = _decode(decoder, sparse, keep, multimask=True)
    single_masks, single_iou = _decode(decoder, sparse, keep, multimask=False)
    (masks.sum() + iou.sum() + single_masks.sum() + single_iou.sum()).backward()
    missing = [name for name, param in decoder.named_parameters() if param.grad is None or not param.grad.any()]
    assert not missing
    assert sparse.grad is not None and not sparse.grad[0, 3:].any()
