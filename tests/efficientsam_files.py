"""Official EfficientSAM checkpoints as the authors write them (yformer/EfficientSAM: ``{"model": state_dict}``),
for the EfficientSAM tests: every key and shape, written from an independent table of the official module
names (efficient_sam_encoder.py, efficient_sam_decoder.py, two_way_transformer.py, mlp.py), not from ditsam's.
"""

from __future__ import annotations

from pathlib import Path

import torch

from checkpoint_files import attention_shapes, linear_shapes, two_way_layer_shapes, vit_block_shapes

# EfficientSAM's ViT pos_embed: the 224 px pre-training grid of 16 px patches (14 x 14) plus a class token.
PRETRAIN_GRID = 14
CLASS_TOKEN = 1


def official_efficientsam_shapes(
    *, width: int, depth: int, prompt: int = 256, decoder_mlp: int = 2048, iou_hidden: int = 256
) -> dict[str, tuple[int, ...]]:
    """Every key and shape of an official EfficientSAM state dict (upscaling 64 / 32, 4 mask tokens, 2 layers)."""
    shapes: dict[str, tuple[int, ...]] = {
        "image_encoder.pos_embed": (1, CLASS_TOKEN + PRETRAIN_GRID**2, width),
        "image_encoder.patch_embed.proj.weight": (width, 3, 16, 16),
        "image_encoder.patch_embed.proj.bias": (width,),
    }
    for i in range(depth):
        shapes.update(vit_block_shapes(f"image_encoder.blocks.{i}.", width, mlp=("fc1", "fc2")))
    shapes.update(
        {
            "image_encoder.neck.0.weight": (prompt, width, 1, 1),
            "image_encoder.neck.1.weight": (prompt,),
            "image_encoder.neck.1.bias": (prompt,),
            "image_encoder.neck.2.weight": (prompt, prompt, 3, 3),
            "image_encoder.neck.3.weight": (prompt,),
            "image_encoder.neck.3.bias": (prompt,),
            "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": (2, prompt // 2),
            "prompt_encoder.invalid_points.weight": (1, prompt),
            "prompt_encoder.point_embeddings.weight": (1, prompt),
            "prompt_encoder.bbox_top_left_embeddings.weight": (1, prompt),
            "prompt_encoder.bbox_bottom_right_embeddings.weight": (1, prompt),
        }
    )

    def linear(prefix: str, n_out: int, n_in: int) -> None:
        shapes.update(linear_shapes(prefix, n_out, n_in))

    for i in range(2):
        layer = f"mask_decoder.transformer.layers.{i}"
        shapes.update(two_way_layer_shapes(layer, prompt, mlp=("layers.0.0", "fc"), mlp_hidden=decoder_mlp))
    shapes.update(attention_shapes("mask_decoder.transformer.final_attn_token_to_image", prompt, internal=prompt // 2))
    shapes.update(
        {
            "mask_decoder.transformer.norm_final_attn.weight": (prompt,),
            "mask_decoder.transformer.norm_final_attn.bias": (prompt,),
            "mask_decoder.iou_token.weight": (1, prompt),
            "mask_decoder.mask_tokens.weight": (4, prompt),
            "mask_decoder.final_output_upscaling_layers.0.0.weight": (prompt, 64, 2, 2),
            "mask_decoder.final_output_upscaling_layers.0.0.bias": (64,),
            "mask_decoder.final_output_upscaling_layers.0.1.weight": (64,),
            "mask_decoder.final_output_upscaling_layers.0.1.bias": (64,),
            "mask_decoder.final_output_upscaling_layers.1.0.weight": (64, 32, 2, 2),
            "mask_decoder.final_output_upscaling_layers.1.0.bias": (32,),
        }
    )
    for i in range(4):
        mlp = f"mask_decoder.output_hypernetworks_mlps.{i}"
        linear(f"{mlp}.layers.0.0", prompt, prompt)
        linear(f"{mlp}.layers.1.0", prompt, prompt)
        linear(f"{mlp}.fc", 32, prompt)
    head = "mask_decoder.iou_prediction_head"
    linear(f"{head}.layers.0.0", iou_hidden, prompt)
    linear(f"{head}.layers.1.0", iou_hidden, iou_hidden)
    linear(f"{head}.fc", 4, iou_hidden)
    return shapes


def random_state_dict(shapes: dict[str, tuple[int, ...]], *, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random values for every key (norm scales around 1), so that a tensor loaded into the wrong place shows."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        noise = torch.randn(shape, generator=generator)
        is_scale = key.endswith("weight") and ("norm" in key or ".neck.1." in key or ".neck.3." in key)
        state[key] = 1.0 + 0.1 * noise if is_scale or key.endswith("layers.0.1.weight") else 0.1 * noise
    return state


def save_official(state: dict[str, torch.Tensor], path: Path) -> Path:
    """Save as the authors do: ``{"model": state_dict}``."""
    torch.save({"model": {key: value.contiguous() for key, value in state.items()}}, path)
    return path
