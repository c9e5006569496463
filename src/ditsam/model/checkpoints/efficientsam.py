"""Official EfficientSAM checkpoints (``efficient_sam_vitt.pt``, ``efficient_sam_vits.pt``: ``{"model": state_dict}``
with yformer/EfficientSAM's key names) into an EfficientSAM-family model.

The prompt encoder and mask decoder keep the official names (:mod:`ditsam.model.efficientsam`); two image
encoder keys differ from ours and are mapped (:func:`efficientsam_to_ours`):

- ``image_encoder.blocks.N.mlp.fc1`` / ``fc2`` are our ``mlp.lin1`` / ``lin2`` (SAM's names);
- ``image_encoder.pos_embed`` is (1, 1 + 14 * 14, C): the 224 px pre-training grid with a class-token
  position first, which EfficientSAM's forward drops before resizing the grid (bicubic) to the input's. The
  class-token row is dropped here (reported), the grid reshaped to (1, 14, 14, C) and resized like SAM's
  to the model's grid when loading -- the same interpolation EfficientSAM applies at run time.

Loading is strict on the EfficientSAM keys: every checkpoint key must be consumed and every
``image_encoder.*`` / ``prompt_encoder.*`` / ``mask_decoder.*`` key of the model must be in the checkpoint,
except the text injection and decoder layers beyond two (fresh); the BERT is kept, W_o (``text_proj``) fresh.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch

from ditsam.model.checkpoints.files import strip_module_prefix
from ditsam.model.checkpoints.keys import POS_EMBED, SAM_PREFIXES, StateDict, has_efficientsam_names
from ditsam.model.checkpoints.loadable import LoadableModel
from ditsam.model.checkpoints.matching import apply_state_dict
from ditsam.model.checkpoints.report import CheckpointError, LoadReport
from ditsam.model.checkpoints.sam import classify_sam_missing

__all__ = ["efficientsam_to_ours", "efficientsam_weights_into", "has_efficientsam_names"]

#: Positions before the patch grid in EfficientSAM's ``pos_embed`` (its pre-training class token).
CLASS_TOKEN_POSITIONS = 1
_MLP = re.compile(r"(image_encoder\.blocks\.\d+\.mlp\.)fc([12])\.(weight|bias)")
_OUR_MLP = re.compile(r"image_encoder\.blocks\.\d+\.mlp\.lin[12]\.(weight|bias)")


def _grid_position_embedding(tensor: torch.Tensor, *, source: str) -> torch.Tensor:
    """(1, 1 + g * g, C) with the class-token position first -> (1, g, g, C)."""
    if tensor.ndim != 3 or tensor.shape[0] != 1:
        raise CheckpointError(
            f"{source}: {POS_EMBED} has shape {tuple(tensor.shape)}; an EfficientSAM checkpoint's is (1, 1 + g*g, C)"
        )
    positions = tensor.shape[1] - CLASS_TOKEN_POSITIONS
    side = math.isqrt(max(positions, 0))
    if positions < 1 or side * side != positions:
        raise CheckpointError(
            f"{source}: {POS_EMBED} has {tensor.shape[1]} positions; an EfficientSAM checkpoint's are one class "
            f"token + a square grid (197 = 1 + 14 * 14)"
        )
    return tensor[:, CLASS_TOKEN_POSITIONS:].reshape(1, side, side, tensor.shape[2])


def efficientsam_to_ours(state_dict: Mapping[str, torch.Tensor], *, source: str = "<state dict>") -> StateDict:
    """An official EfficientSAM state dict in our names (see the module docstring); the tensors are not copied
    except ``pos_embed``'s grid. A key already in our MLP names is refused: the file is not EfficientSAM's."""
    converted: StateDict = {}
    for key, tensor in state_dict.items():
        if _OUR_MLP.fullmatch(key):
            raise CheckpointError(
                f"{source}: {key} is a SAM / ditsam name, not EfficientSAM's (mlp.fc1 / fc2): not an official "
                f"EfficientSAM checkpoint"
            )
        if key == POS_EMBED:
            converted[key] = _grid_position_embedding(tensor, source=source)
        else:
            converted[_MLP.sub(r"\1lin\2.\3", key)] = tensor
    return converted


def _require_family(model: LoadableModel, source: str) -> None:
    config = model.config
    if config.model_family != "efficientsam":
        raise CheckpointError(
            f"{source} is an EfficientSAM checkpoint, but the model is SAM ({config.backbone}): build it with "
            f"model.backbone: efficientsam_ti (192 wide) or efficientsam_s (384 wide)"
        )


def efficientsam_weights_into(
    model: LoadableModel, state_dict: Mapping[str, torch.Tensor], *, source: str = "<state dict>"
) -> LoadReport:
    """Load an official EfficientSAM state dict (``module.`` prefix allowed) into ``model``'s image encoder,
    prompt encoder and mask decoder, strictly (see the module docstring).

    Raises :class:`CheckpointError` for a SAM-family model, a key the model lacks, a model key the checkpoint
    lacks, or a shape that does not fit (the message names the keys and shapes).
    """
    _require_family(model, source)
    state = strip_module_prefix(state_dict)
    outside = [key for key in state if not key.startswith(SAM_PREFIXES)]
    if outside:
        raise CheckpointError(
            f"{source}: {len(outside)} key(s) outside image_encoder / prompt_encoder / mask_decoder in an "
            f"EfficientSAM checkpoint: {', '.join(outside[:5])}"
        )
    notes = [
        f"{POS_EMBED}: EfficientSAM's class-token position dropped (its forward never reads it), the 224 px "
        f"pre-training grid resized to the model's {model.config.grid}x{model.config.grid}"
    ]
    return apply_state_dict(
        model,
        efficientsam_to_ours(state, source=source),
        kind="efficientsam",
        source=source,
        classify_missing=classify_sam_missing,
        notes=notes,
    )
