"""Checkpoint files as others write them, for the loading tests (shared by test_weights and
test_loading_sources): official SAM key names and shapes (from pieces that ``efficientsam_files.py`` builds
EfficientSAM's from too), the authors' trainer's wrapped ``.pth``, and a randomiser so that zero-initialised
tensors cannot hide mistakes.

Written from an independent table of the official names, not from ditsam's own modules (only
:func:`~ditsam.model.checkpoints.reference.to_reference_state_dict` renames, and its inverse is what is tested).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ditsam.model.checkpoints.reference import to_reference_state_dict
from ditsam.model.config import reference_config
from ditsam.model.dit import DITSam


def randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random values everywhere (zero-initialised tables and projections would hide mistakes)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if ("norm" in name or "LayerNorm" in name or "neck.1" in name or "neck.3" in name) and name.endswith(
                "weight"
            ):
                param.copy_(1.0 + 0.1 * noise)
            else:
                param.copy_(0.1 * noise)
    return model.eval()


# ---------------------------------------------------------------------------------------------------
# Pieces the official SAM and EfficientSAM tables share (the same module layout, some names differ)
# ---------------------------------------------------------------------------------------------------
def linear_shapes(prefix: str, n_out: int, n_in: int) -> dict[str, tuple[int, ...]]:
    """An ``nn.Linear(n_in, n_out)`` at ``prefix``."""
    return {f"{prefix}.weight": (n_out, n_in), f"{prefix}.bias": (n_out,)}


def vit_block_shapes(
    block: str, width: int, *, mlp: tuple[str, str], rel_pos: tuple[int, int] | None = None
) -> dict[str, tuple[int, ...]]:
    """One ViT block (``block`` ends in a dot), MLP ratio 4; ``mlp``: its two linears' names (SAM: lin1, lin2;
    EfficientSAM: fc1, fc2); ``rel_pos``: the shape of SAM's relative-position tables (EfficientSAM has none)."""
    shapes = {block + "norm1.weight": (width,), block + "norm1.bias": (width,)}
    if rel_pos is not None:
        shapes.update({block + "attn.rel_pos_h": rel_pos, block + "attn.rel_pos_w": rel_pos})
    shapes.update(linear_shapes(block + "attn.qkv", 3 * width, width))
    shapes.update(linear_shapes(block + "attn.proj", width, width))
    shapes.update({block + "norm2.weight": (width,), block + "norm2.bias": (width,)})
    shapes.update(linear_shapes(f"{block}mlp.{mlp[0]}", 4 * width, width))
    shapes.update(linear_shapes(f"{block}mlp.{mlp[1]}", width, 4 * width))
    return shapes


def attention_shapes(prefix: str, width: int, *, internal: int) -> dict[str, tuple[int, ...]]:
    """A decoder attention (SAM's ``Attention``): q, k, v projected from ``width`` to ``internal``, and back."""
    shapes: dict[str, tuple[int, ...]] = {}
    for proj in ("q_proj", "k_proj", "v_proj"):
        shapes.update(linear_shapes(f"{prefix}.{proj}", internal, width))
    shapes.update(linear_shapes(f"{prefix}.out_proj", width, internal))
    return shapes


def two_way_layer_shapes(
    layer: str, width: int, *, mlp: tuple[str, str], mlp_hidden: int
) -> dict[str, tuple[int, ...]]:
    """One two-way transformer layer (cross attention at half width); ``mlp``: its token MLP's two linears'
    names under ``<layer>.mlp`` (SAM: lin1, lin2; EfficientSAM: layers.0.0, fc)."""
    shapes = attention_shapes(f"{layer}.self_attn", width, internal=width)
    shapes.update(attention_shapes(f"{layer}.cross_attn_token_to_image", width, internal=width // 2))
    shapes.update(attention_shapes(f"{layer}.cross_attn_image_to_token", width, internal=width // 2))
    for norm in range(1, 5):
        shapes.update({f"{layer}.norm{norm}.weight": (width,), f"{layer}.norm{norm}.bias": (width,)})
    shapes.update(linear_shapes(f"{layer}.mlp.{mlp[0]}", mlp_hidden, width))
    shapes.update(linear_shapes(f"{layer}.mlp.{mlp[1]}", width, mlp_hidden))
    return shapes


def official_sam_shapes(
    *, width: int, depth: int, heads: int, global_blocks: tuple[int, ...]
) -> dict[str, tuple[int, ...]]:
    """Every key and shape of an official segment-anything checkpoint (1024 px, window 14, decoder 256)."""
    shapes: dict[str, tuple[int, ...]] = {
        "image_encoder.pos_embed": (1, 64, 64, width),
        "image_encoder.patch_embed.proj.weight": (width, 3, 16, 16),
        "image_encoder.patch_embed.proj.bias": (width,),
    }
    head_dim = width // heads
    for i in range(depth):
        block = f"image_encoder.blocks.{i}."
        rows = 127 if i in global_blocks else 27
        shapes.update(vit_block_shapes(block, width, mlp=("lin1", "lin2"), rel_pos=(rows, head_dim)))
    shapes.update(
        {
            "image_encoder.neck.0.weight": (256, width, 1, 1),
            "image_encoder.neck.1.weight": (256,),
            "image_encoder.neck.1.bias": (256,),
            "image_encoder.neck.2.weight": (256, 256, 3, 3),
            "image_encoder.neck.3.weight": (256,),
            "image_encoder.neck.3.bias": (256,),
            "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": (2, 128),
            "prompt_encoder.not_a_point_embed.weight": (1, 256),
            "prompt_encoder.no_mask_embed.weight": (1, 256),
            "prompt_encoder.mask_downscaling.0.weight": (4, 1, 2, 2),
            "prompt_encoder.mask_downscaling.0.bias": (4,),
            "prompt_encoder.mask_downscaling.1.weight": (4,),
            "prompt_encoder.mask_downscaling.1.bias": (4,),
            "prompt_encoder.mask_downscaling.3.weight": (16, 4, 2, 2),
            "prompt_encoder.mask_downscaling.3.bias": (16,),
            "prompt_encoder.mask_downscaling.4.weight": (16,),
            "prompt_encoder.mask_downscaling.4.bias": (16,),
            "prompt_encoder.mask_downscaling.6.weight": (256, 16, 1, 1),
            "prompt_encoder.mask_downscaling.6.bias": (256,),
        }
    )
    shapes.update({f"prompt_encoder.point_embeddings.{i}.weight": (1, 256) for i in range(4)})

    for i in range(2):
        shapes.update(
            two_way_layer_shapes(f"mask_decoder.transformer.layers.{i}", 256, mlp=("lin1", "lin2"), mlp_hidden=2048)
        )
    shapes.update(attention_shapes("mask_decoder.transformer.final_attn_token_to_image", 256, internal=128))
    shapes.update(
        {
            "mask_decoder.transformer.norm_final_attn.weight": (256,),
            "mask_decoder.transformer.norm_final_attn.bias": (256,),
            "mask_decoder.iou_token.weight": (1, 256),
            "mask_decoder.mask_tokens.weight": (4, 256),
            "mask_decoder.output_upscaling.0.weight": (256, 64, 2, 2),
            "mask_decoder.output_upscaling.0.bias": (64,),
            "mask_decoder.output_upscaling.1.weight": (64,),
            "mask_decoder.output_upscaling.1.bias": (64,),
            "mask_decoder.output_upscaling.3.weight": (64, 32, 2, 2),
            "mask_decoder.output_upscaling.3.bias": (32,),
        }
    )
    for i in range(4):
        mlp = f"mask_decoder.output_hypernetworks_mlps.{i}.layers"
        shapes.update(
            {
                f"{mlp}.0.weight": (256, 256),
                f"{mlp}.0.bias": (256,),
                f"{mlp}.1.weight": (256, 256),
                f"{mlp}.1.bias": (256,),
                f"{mlp}.2.weight": (32, 256),
                f"{mlp}.2.bias": (32,),
            }
        )
    head = "mask_decoder.iou_prediction_head.layers"
    shapes.update(
        {
            f"{head}.0.weight": (256, 256),
            f"{head}.0.bias": (256,),
            f"{head}.1.weight": (256, 256),
            f"{head}.1.bias": (256,),
            f"{head}.2.weight": (4, 256),
            f"{head}.2.bias": (4,),
        }
    )
    return shapes


def cheap_state_dict(
    shapes: dict[str, tuple[int, ...]], *, random_keys: tuple[str, ...] = ()
) -> dict[str, torch.Tensor]:
    """Constant zero-stride tensors (a per-key value, so mix-ups show), random values for ``random_keys``."""
    generator = torch.Generator().manual_seed(1)
    state = {}
    for index, (key, shape) in enumerate(shapes.items()):
        if any(key.endswith(suffix) for suffix in random_keys):
            state[key] = torch.randn(shape, generator=generator)
        else:
            state[key] = torch.full((), 0.001 * index).expand(shape)
    return state


def reference_pos_embed(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """The reference's get_abs_pos: bicubic, align_corners=False, (1, H, W, C) layout."""
    return F.interpolate(pos.permute(0, 3, 1, 2), size=(grid, grid), mode="bicubic", align_corners=False).permute(
        0, 2, 3, 1
    )


def reference_rel_pos(table: torch.Tensor, rows: int) -> torch.Tensor:
    """The reference's get_rel_pos interpolation: linear over the rows, per channel."""
    return (
        F.interpolate(table.reshape(1, table.shape[0], -1).permute(0, 2, 1), size=rows, mode="linear")
        .reshape(-1, rows)
        .permute(1, 0)
    )


def reference_checkpoint(model: DITSam, *, grid_scale: int = 2) -> tuple[dict[str, object], dict[str, torch.Tensor]]:
    """``model``'s weights as the authors' trainer saves them, with the reference's larger position
    tables (``grid_scale`` x the grid, window tables at the window size); returns the checkpoint and the
    position tables ``model`` must hold to compute what the reference computes."""
    config = model.config
    state = to_reference_state_dict(model.state_dict(), config, prefix="module.", old_bert_names=True)
    generator = torch.Generator().manual_seed(5)
    big_grid = config.grid * grid_scale
    width, heads = config.size.embed_dim, config.size.num_heads
    pos = torch.randn(1, big_grid, big_grid, width, generator=generator)
    state["module.visual_encoder.pos_embed"] = pos
    equivalent = {"image_encoder.pos_embed": reference_pos_embed(pos, config.grid)}
    for i in range(config.size.depth):
        rows = 2 * big_grid - 1 if i in config.size.global_attn_indexes else 2 * config.window_size - 1
        for axis in "hw":
            table = torch.randn(rows, width // heads, generator=generator)
            state[f"module.visual_encoder.blocks.{i}.attn.rel_pos_{axis}"] = table
            equivalent[f"image_encoder.blocks.{i}.attn.rel_pos_{axis}"] = reference_rel_pos(table, 2 * config.grid - 1)
    text_dim = model.text_encoder.hidden_size
    state.update(
        {  # present in every reference checkpoint, unused by its forward
            "module.query_embeddings": torch.randn(1, 4, text_dim, generator=generator),
            "module.self_attention.in_proj_weight": torch.randn(3 * text_dim, text_dim, generator=generator),
            "module.self_attention.in_proj_bias": torch.randn(3 * text_dim, generator=generator),
            "module.self_attention.out_proj.weight": torch.randn(text_dim, text_dim, generator=generator),
            "module.self_attention.out_proj.bias": torch.randn(text_dim, generator=generator),
            "module.lang_encoder.bert.pooler.dense.weight": torch.randn(text_dim, text_dim, generator=generator),
            "module.lang_encoder.bert.pooler.dense.bias": torch.randn(text_dim, generator=generator),
        }
    )
    checkpoint = {
        "epoch": 40,
        "state_dict": state,
        "optimizer": {"state": {}, "param_groups": []},
        "scheduler": {"last_epoch": 3},
        "lr": 1e-6,
    }
    return checkpoint, equivalent


# ---------------------------------------------------------------------------------------------------
# The authors' trainer's files, from a tiny random model
# ---------------------------------------------------------------------------------------------------
SENTENCES = ["the red circle left of the blue star", "a small green square"]
REFERENCE_SIZE = 512  # what a config-less authors' file runs at


def tiny_reference_model(bert_dir: Path, **overrides: object) -> DITSam:
    """A random tiny model that a config-less load must rebuild exactly: ViT width = the tiny BERT's (32),
    the reference's 512 px input and SAM's 8 decoder heads (the two things the weights do not show)."""
    settings: dict[str, object] = dict(
        backbone="custom",
        embed_dim=32,
        depth=2,
        num_heads=2,
        global_attn_indexes=[1],
        image_size=REFERENCE_SIZE,
        prompt_embed_dim=32,
        decoder_mlp_dim=64,
        decoder_num_heads=8,
        text={"name_or_path": str(bert_dir)},
    )
    settings.update(overrides)
    return randomise(DITSam(reference_config(**settings)), seed=1)


def save_from_gpu(checkpoint: dict[str, object], path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.save as on the authors' GPUs: every storage tagged cuda:0 (no GPU needed to write that)."""
    with monkeypatch.context() as patch:
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(checkpoint, path)
    with zipfile.ZipFile(path) as archive:
        pickled = next(archive.read(name) for name in archive.namelist() if name.endswith("data.pkl"))
    assert b"cuda:0" in pickled


def adam_state(state_dict: dict[str, torch.Tensor]) -> dict[str, object]:
    """An Adam optimizer state as the authors' trainer saves it beside the weights."""
    return {
        "state": {
            i: {"step": torch.tensor(7.0), "exp_avg": torch.zeros_like(t), "exp_avg_sq": torch.zeros_like(t)}
            for i, t in enumerate(state_dict.values())
        },
        "param_groups": [{"lr": 1e-6, "betas": (0.9, 0.98), "eps": 1e-9, "params": list(range(len(state_dict)))}],
    }


def authors_file(bert_dir: Path, path: Path, monkeypatch: pytest.MonkeyPatch, **overrides: object) -> DITSam:
    """Write ``path`` as the authors' trainer would; returns the model computing what the reference computes."""
    source = tiny_reference_model(bert_dir, **overrides)
    checkpoint, equivalent = reference_checkpoint(source)
    checkpoint["optimizer"] = adam_state(checkpoint["state_dict"])  # type: ignore[arg-type]
    save_from_gpu(checkpoint, path, monkeypatch)
    source.load_state_dict(equivalent, strict=False)  # the position tables the reference interpolates at run time
    return source


@torch.no_grad()
def logits(model: DITSam) -> torch.Tensor:
    images = torch.randn(len(SENTENCES), 3, REFERENCE_SIZE, REFERENCE_SIZE, generator=torch.Generator().manual_seed(0))
    return model(images, text=SENTENCES).logits
