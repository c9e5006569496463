"""transformers' ``SamModel`` names of SAM's weights, renamed to the official segment-anything key names.

Official names (sam_vit_*.pth): `image_encoder.*`, `prompt_encoder.*`, `mask_decoder.*`. The
tensors themselves need no change: only names differ, plus two layout facts:
- HF keeps the random-Fourier matrix twice (`shared_image_embedding` and the prompt encoder's tied
  copy); SAM keeps one buffer, `prompt_encoder.pe_layer.positional_encoding_gaussian_matrix`.
- HF's MLP heads name their linears proj_in / layers.{i} / proj_out; SAM numbers them all
  layers.{0..depth-1}.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch

from ditsam.model.checkpoints.keys import StateDict
from ditsam.model.checkpoints.report import CheckpointError

#: Key prefixes only a transformers ``SamModel`` has.
HF_SAM_PREFIXES = ("vision_encoder.", "shared_image_embedding.")
_PE_KEY = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
_HF_PE_KEYS = ("shared_image_embedding.positional_embedding", "prompt_encoder.shared_embedding.positional_embedding")

_P = r"(weight|bias)"
# (HF full-match pattern, official template). Every HF key must match exactly one rule.
_RULES: tuple[tuple[str, str], ...] = (
    # image encoder
    (rf"vision_encoder\.patch_embed\.projection\.{_P}", r"image_encoder.patch_embed.proj.\1"),
    (r"vision_encoder\.pos_embed", r"image_encoder.pos_embed"),
    (rf"vision_encoder\.layers\.(\d+)\.layer_norm([12])\.{_P}", r"image_encoder.blocks.\1.norm\2.\3"),
    (
        r"vision_encoder\.layers\.(\d+)\.attn\.(qkv\.weight|qkv\.bias|proj\.weight|proj\.bias|rel_pos_h|rel_pos_w)",
        r"image_encoder.blocks.\1.attn.\2",
    ),
    (rf"vision_encoder\.layers\.(\d+)\.mlp\.(lin[12])\.{_P}", r"image_encoder.blocks.\1.mlp.\2.\3"),
    (r"vision_encoder\.neck\.conv1\.weight", r"image_encoder.neck.0.weight"),
    (rf"vision_encoder\.neck\.layer_norm1\.{_P}", r"image_encoder.neck.1.\1"),
    (r"vision_encoder\.neck\.conv2\.weight", r"image_encoder.neck.2.weight"),
    (rf"vision_encoder\.neck\.layer_norm2\.{_P}", r"image_encoder.neck.3.\1"),
    # prompt encoder
    (rf"prompt_encoder\.mask_embed\.conv1\.{_P}", r"prompt_encoder.mask_downscaling.0.\1"),
    (rf"prompt_encoder\.mask_embed\.layer_norm1\.{_P}", r"prompt_encoder.mask_downscaling.1.\1"),
    (rf"prompt_encoder\.mask_embed\.conv2\.{_P}", r"prompt_encoder.mask_downscaling.3.\1"),
    (rf"prompt_encoder\.mask_embed\.layer_norm2\.{_P}", r"prompt_encoder.mask_downscaling.4.\1"),
    (rf"prompt_encoder\.mask_embed\.conv3\.{_P}", r"prompt_encoder.mask_downscaling.6.\1"),
    (r"prompt_encoder\.point_embed\.(\d+)\.weight", r"prompt_encoder.point_embeddings.\1.weight"),
    (r"prompt_encoder\.(not_a_point_embed|no_mask_embed)\.weight", r"prompt_encoder.\1.weight"),
    # mask decoder
    (r"mask_decoder\.(iou_token|mask_tokens)\.weight", r"mask_decoder.\1.weight"),
    (
        rf"mask_decoder\.transformer\.layers\.(\d+)\."
        rf"(self_attn|cross_attn_token_to_image|cross_attn_image_to_token)\.([qkv]_proj|out_proj)\.{_P}",
        r"mask_decoder.transformer.layers.\1.\2.\3.\4",
    ),
    (
        rf"mask_decoder\.transformer\.layers\.(\d+)\.layer_norm([1-4])\.{_P}",
        r"mask_decoder.transformer.layers.\1.norm\2.\3",
    ),
    (
        rf"mask_decoder\.transformer\.layers\.(\d+)\.mlp\.(lin[12])\.{_P}",
        r"mask_decoder.transformer.layers.\1.mlp.\2.\3",
    ),
    (
        rf"mask_decoder\.transformer\.final_attn_token_to_image\.([qkv]_proj|out_proj)\.{_P}",
        r"mask_decoder.transformer.final_attn_token_to_image.\1.\2",
    ),
    (rf"mask_decoder\.transformer\.layer_norm_final_attn\.{_P}", r"mask_decoder.transformer.norm_final_attn.\1"),
    (rf"mask_decoder\.upscale_conv1\.{_P}", r"mask_decoder.output_upscaling.0.\1"),
    (rf"mask_decoder\.upscale_layer_norm\.{_P}", r"mask_decoder.output_upscaling.1.\1"),
    (rf"mask_decoder\.upscale_conv2\.{_P}", r"mask_decoder.output_upscaling.3.\1"),
)
_COMPILED = tuple((re.compile(pattern), template) for pattern, template in _RULES)

# HF feed-forward heads: <prefix>.{proj_in | layers.i | proj_out}.{weight|bias}.
_HF_HEAD = re.compile(
    rf"(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head))\.(proj_in|proj_out|layers\.(\d+))\.{_P}"
)


def _head_depths(keys: list[str]) -> dict[str, int]:
    """Number of linear layers of each HF feed-forward head: hidden layers + proj_in + proj_out."""
    hidden: dict[str, set[int]] = {}
    for key in keys:
        match = _HF_HEAD.fullmatch(key)
        if match:
            indices = hidden.setdefault(match.group(1), set())
            if match.group(3) is not None:
                indices.add(int(match.group(3)))
    return {prefix: len(indices) + 2 for prefix, indices in hidden.items()}


def _rename_head(match: re.Match[str], depths: dict[str, int]) -> str:
    prefix, part, hidden_index, kind = match.groups()
    if part == "proj_in":
        index = 0
    elif part == "proj_out":
        index = depths[prefix] - 1
    else:
        index = int(hidden_index) + 1
    return f"{prefix}.layers.{index}.{kind}"


def hf_sam_key_to_official(key: str, *, head_depths: Mapping[str, int]) -> str | None:
    """Official name of one HF key (the positional-encoding keys excepted); None if unknown."""
    head = _HF_HEAD.fullmatch(key)
    if head:
        return _rename_head(head, dict(head_depths))
    for pattern, template in _COMPILED:
        match = pattern.fullmatch(key)
        if match:
            return match.expand(template)
    return None


def hf_sam_to_official(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a transformers `SamModel.state_dict()` to official SAM names (same tensors).

    A partial dict (say, the decoder only) is fine. Raises ValueError on keys it does not know,
    so that a naming drift in transformers cannot go unnoticed, and when the two HF copies of
    the positional-encoding matrix disagree.
    """
    keys = list(state_dict)
    depths = _head_depths(keys)
    renamed: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key in keys:
        if key in _HF_PE_KEYS:
            continue
        official = hf_sam_key_to_official(key, head_depths=depths)
        if official is None:
            unknown.append(key)
        else:
            renamed[official] = state_dict[key]
    if unknown:
        raise ValueError(f"unknown transformers SAM keys: {unknown}")

    copies = [state_dict[key] for key in _HF_PE_KEYS if key in state_dict]
    if copies:
        if any(not torch.equal(copies[0], other) for other in copies[1:]):
            raise ValueError(f"the tied positional-encoding matrices {_HF_PE_KEYS} differ")
        renamed[_PE_KEY] = copies[0]
    return renamed


def has_hf_sam_names(keys: Iterable[str]) -> bool:
    """Whether these keys (no ``module.`` prefix) are a transformers ``SamModel``'s."""
    return any(key.startswith(HF_SAM_PREFIXES) for key in keys)


def official_sam_names(state_dict: Mapping[str, torch.Tensor], *, source: str) -> tuple[StateDict, list[str]]:
    """A SAM state dict (no ``module.`` prefix) in official names, renamed when it has transformers' names;
    returns it and the note saying so (none when nothing was renamed)."""
    if not has_hf_sam_names(state_dict):
        return dict(state_dict), []
    try:
        return hf_sam_to_official(state_dict), ["renamed from transformers SamModel names"]
    except ValueError as error:
        raise CheckpointError(f"{source}: {error}") from error
