"""Loading weights into :class:`~ditsam.model.dit.DITSam`, with a report of what went where.

Three checkpoint formats are understood; :func:`load_checkpoint` tells them apart.

1. **Official SAM** (``sam_vit_b_01ec64.pth``, ``sam_vit_l_0b3195.pth``, ``sam_vit_h_4b8939.pth``): a plain
   state dict with ``image_encoder.*``, ``prompt_encoder.*`` and ``mask_decoder.*`` keys, the names our SAM
   modules keep. :func:`load_sam_checkpoint` is strict on those keys. Two shape differences are expected and
   resized: ``image_encoder.pos_embed`` (SAM: 64x64 grid for 1024 px) bicubically to the model's grid, and
   the ``*.attn.rel_pos_h/w`` tables (SAM: 27 rows in window blocks, 127 in global blocks) linearly to the
   model's layout (every block global at 512 px: 63 rows) -- the same interpolations SAM itself applies
   at run time, so the numbers equal what the reference code computes on the fly. Parameters SAM does not
   have (text injection, ``text_proj`` = W_o, decoder layers beyond SAM's two) keep their initial values
   and are reported as *fresh*; the BERT weights are left as they are (*kept*). A transformers ``SamModel``
   state dict is renamed first (:mod:`ditsam.model.sam.hf_names`).

2. **Reference DIT** (the authors' code, GitHub ``wysnzzzz/DIT``). What its trainer writes, and how it is
   named (evidence from that repository; line numbers approximate):

   - ``train.py`` (``main_worker``): after each epoch ``ema.apply_shadow()`` and then ``torch.save({'epoch',
     'state_dict': net.state_dict(), 'optimizer', 'scheduler', 'lr'}, .../ckpt/{last,det_best,seg_best,
     oiou_best}.pth)``. ``utils/utils.py`` ``EMA.apply_shadow`` loads the EMA copy of the *whole* state dict
     (buffers included, decay 0.9997) into the network, so ``state_dict`` already holds the EMA weights;
     there is no separate EMA entry. ``net`` is wrapped in DDP for multi-GPU runs, hence a ``module.``
     prefix on every key.
   - ``models/layer_wise/net.py`` (~l. 48-103; ``models/e2e/net.py`` is identical there): ``visual_encoder``
     = the modified SAM ViT-B built with ``img_size=1024``, so its ``pos_embed`` is (1, 64, 64, 768) and its
     window blocks' rel-pos tables have 27 rows, global blocks' 127; ``get_abs_pos`` and ``get_rel_pos``
     interpolate them at run time to the 32x32 grid of the 512 px input (63 rows). ``prompt_encoder`` and
     ``mask_decoder`` (SAM's, 3 multimask outputs, transformer depth 2; 4 in ``default_sam_add_2``, i.e.
     ``mask_decoder.transformer.layers.0-3``), ``text_proj = nn.Linear(768, 256)`` (W_o, applied to the raw
     BERT features), ``lang_encoder`` (below) and two parameters the forward never uses:
     ``query_embeddings`` (1, 4, 768) and ``self_attention`` (an ``nn.MultiheadAttention(768, 12)``, its call
     commented out). Both are *ignored* here.
   - ``models/language_encoder.py`` (~l. 26-43): ``lang_encoder`` is a ``BERT`` module holding a
     ``pytorch_pretrained_bert`` ``BertModel`` as ``self.bert`` -> keys ``lang_encoder.bert.embeddings...``,
     ``lang_encoder.bert.encoder.layer.N.attention.self.query...``, ``lang_encoder.bert.pooler.dense...``
     (no pooler here: *ignored*). Names equal transformers' ``BertModel`` except ``LayerNorm.gamma/beta`` in
     old pytorch_pretrained_bert releases (renamed to ``weight/bias``). ``language_encoder(__C,
     'bert-base-uncased', True)`` passes ``True`` as ``enc_num``, so the features are
     ``all_encoder_layers[True - 1]``: the output of BERT's *first* layer (``text.hidden_layer = 1``).
   - ``models/segment_anything/modeling/image_encoder_layer_wise.py`` (L-DIT, ~l. 118-126 and ``forward``):
     ``visual_encoder.probs.{i}`` = ``nn.Linear(embed_dim, embed_dim)``, zero-initialised, one per block;
     before block ``i`` the text positions are overwritten with ``self.drop(self.probs[i](y))`` (y = BERT
     features, ``drop`` = ``Dropout(0.1)``). Our ``image_encoder.injection.writers.{i}.proj``.
   - ``image_encoder_layer_wise_vith.py`` (ViT-H): BERT's 768-d features reach the 1280-d width through one
     shared ``visual_encoder.prob_text = nn.Linear(768, 1280)``, then ``probs.{i}`` (1280 -> 1280). The two
     linears are folded on load into our single ``writers.{i}.proj`` (768 -> 1280):
     ``W = P_i T``, ``b = P_i t + p_i`` -- equal outputs up to float rounding.
   - ``image_encoder_e2e.py`` (E-DIT): the same ``probs.{0..depth-1}``, also zero-initialised, but only
     ``probs.0`` sees the BERT features; before every later block ``i`` the text tokens the ViT carries are
     replaced by ``drop(probs[i](text tokens))``. That is our E-DIT with ``refine_text_per_layer: true``
     (``writers.{i}.proj``, :class:`~ditsam.model.inject.RefineText`), whatever the freezing. In
     ``image_encoder_e2e_token.py`` the single projection is ``visual_encoder.probs`` (no index), mapped to
     ``writers.0.proj``.
   - Not convertible (a clear error names the key): ``visual_encoder.tokens`` (the ``*_token`` variants add
     learned per-layer tensors to the text positions, not our appended static tokens), and the
     cross-attention variants' ``visual_encoder.cross.* / ln.*`` (there the raw BERT features *query* the
     ViT's text tokens and the result overwrites the text positions; our Table-3 modules let the image
     tokens attend to the text instead).

   :func:`load_reference_checkpoint` maps ``visual_encoder.`` -> ``image_encoder.``,
   ``lang_encoder.bert.`` -> ``text_encoder.bert.``, ``probs`` -> injection writers, resizes ``pos_embed``
   and the rel-pos tables as for SAM, and is strict on every other key. What
   :func:`~ditsam.model.config.reference_config` reproduces of that code: global attention in every block,
   text tokens before the image tokens, the rel-pos bias on image-image logits only, no [PAD] mask
   (``mask_text_padding: false``), BERT's first layer, W_o on the raw BERT features, the single-mask output
   and the align_corners upsampling -- so in eval mode a converted checkpoint gives the reference logits.
   Differences that only matter when *training* (documented, not reproduced): the reference's dropout acts
   on the *output* of each projection (``drop(probs[i](y))``) while our L-DIT drops the BERT features
   before the projection; our E-DIT has no dropout, and its per-layer refresh starts at the identity where
   the reference's starts at zero; a folded ViT-H projection trains as one matrix, not two. A model built
   with settings other than the reference's (windowed attention, a [PAD] mask, another BERT layer,
   multimask output, another upsampling) still loads, with a warning per difference in the report.

3. **Ours**: a folder written by :meth:`DITSam.save_pretrained` -- ``config.json`` (``{"format_version",
   "model": config}``), ``model.safetensors`` and ``text_encoder/`` (BERT config + tokenizer). Read by
   :func:`load_ditsam_directory` (behind :meth:`DITSam.from_pretrained`), strictly.

Files are always read with ``torch.load(..., map_location="cpu", weights_only=True)`` (memory-mapped for
zip-format files, so tensors saved on ``cuda:0`` load on a CPU-only machine and an optimizer state that is
dropped is never read) or safetensors: a checkpoint that needs arbitrary Python objects is refused, never
unpickled. Which source to load (a folder, a Hub id, an authors' file without config) is decided in
:mod:`ditsam.model.sources`. Nothing happens at import time.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pickle
import re
import zipfile
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ditsam.config import ConfigError
from ditsam.model.config import BACKBONES, DITSamConfig
from ditsam.model.dit import CONFIG_FILE, FORMAT_VERSION, TEXT_DIR, WEIGHTS_FILE
from ditsam.model.sam.image_encoder import resize_absolute_position_embedding, resize_relative_position_table

if TYPE_CHECKING:
    from ditsam.model.dit import DITSam

logger = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]

SAM_PREFIXES = ("image_encoder.", "prompt_encoder.", "mask_decoder.")
SAM_DECODER_LAYERS = 2  # SAM's two-way transformer depth: mask_decoder.transformer.layers.0-1
REFERENCE_MAX_TOKENS = 20
REFERENCE_IMAGE_SIZE = 512

_INJECTION_PREFIX = "image_encoder.injection."
_TEXT_PREFIX = "text_encoder."
_POS_EMBED = "image_encoder.pos_embed"
_REL_POS = re.compile(r"image_encoder\.blocks\.(\d+)\.attn\.rel_pos_[hw]")
_DECODER_LAYER = re.compile(r"mask_decoder\.transformer\.layers\.(\d+)\.")
_BLOCK = re.compile(r"image_encoder\.blocks\.(\d+)\.")
_WRITER = re.compile(r"image_encoder\.injection\.writers\.(\d+)\.proj\.(weight|bias)")

# Where a wrapped checkpoint keeps its weights, EMA copies first.
_EMA_KEYS = ("ema_state_dict", "state_dict_ema", "model_ema", "ema_model", "ema")
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "weights")


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the model; the message names the file and the keys."""


# ---------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------
def _group(keys: list[str]) -> list[str]:
    """Collapse numbered keys: ``blocks.3.attn.rel_pos_h`` and ``blocks.4...`` -> ``blocks.*.attn.rel_pos_h (x2)``."""
    counts = Counter(re.sub(r"\.\d+(?=\.|$)", ".*", key) for key in keys)
    return [pattern if count == 1 else f"{pattern} (x{count})" for pattern, count in counts.items()]


def _ranges(indices: set[int]) -> str:
    """{0, 1, 2, 5} -> "0-2,5"."""
    ordered, parts = sorted(indices), []
    start = previous = ordered[0]
    for index in [*ordered[1:], None]:
        if index is not None and index == previous + 1:
            previous = index
            continue
        parts.append(str(start) if start == previous else f"{start}-{previous}")
        if index is not None:
            start = previous = index
    return ",".join(parts)


def _summarise(keys: list[str]) -> list[str]:
    """One line per module: ``mask_decoder.transformer.layers.{2-3}.* (72 tensors)``, ``text_proj.* (2 tensors)``."""
    groups: dict[str, tuple[set[int], list[str]]] = {}
    for key in keys:
        parts = key.split(".")
        numbered = next((i for i, part in enumerate(parts) if part.isdigit()), None)
        if numbered is not None:
            prefix = ".".join(parts[:numbered])
            groups.setdefault(prefix, (set(), []))[0].add(int(parts[numbered]))
        else:
            prefix = ".".join(parts[: min(3, len(parts) - 1)])
        groups.setdefault(prefix, (set(), []))[1].append(key)
    lines = []
    for prefix, (indices, members) in groups.items():
        if len(members) == 1:
            lines.append(members[0])
        elif indices:
            lines.append(f"{prefix}.{{{_ranges(indices)}}}.* ({len(members)} tensors)")
        else:
            lines.append(f"{prefix}.* ({len(members)} tensors)")
    return lines


@dataclasses.dataclass
class LoadReport:
    """What a load did with every tensor.

    ``loaded``: model keys set from the checkpoint (resized ones included). ``resized``: (key, checkpoint
    shape, model shape). ``fresh``: model parameters the checkpoint does not have, left at their initial
    values (text injection, W_o, extra decoder layers). ``kept``: model parameters deliberately not taken
    from this kind of checkpoint and left as they were (the BERT of a model loaded from SAM weights).
    ``ignored``: checkpoint keys skipped on purpose. ``notes``: anything else worth knowing.
    """

    source: str
    kind: str
    loaded: list[str] = dataclasses.field(default_factory=list)
    resized: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = dataclasses.field(default_factory=list)
    fresh: list[str] = dataclasses.field(default_factory=list)
    kept: list[str] = dataclasses.field(default_factory=list)
    ignored: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def __str__(self) -> str:
        lines = [
            f"{self.kind} checkpoint {self.source}: {len(self.loaded)} tensors loaded ({len(self.resized)} resized), "
            f"{len(self.fresh)} freshly initialised, {len(self.kept)} kept, {len(self.ignored)} ignored"
        ]
        resized = _group([f"{key} {tuple(old)} -> {tuple(new)}" for key, old, new in self.resized])
        lines += [f"  resized: {entry}" for entry in resized]
        lines += [f"  fresh: {entry}" for entry in _summarise(self.fresh)]
        lines += [f"  kept: {entry}" for entry in _summarise(self.kept)]
        lines += [f"  ignored: {entry}" for entry in _summarise(self.ignored)]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------------
def _weights_only_cause(error: Exception) -> str:
    """The informative line(s) of torch's long weights_only error."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = [
        line
        for line in lines
        if not line.startswith(("Weights only load failed", "Check the documentation", "Please file an issue"))
    ]
    return " ".join(useful) or (lines[0] if lines else type(error).__name__)


def _torch_load(path: Path) -> Any:
    """``torch.load`` on the CPU, weights only; zip-format files are memory-mapped, so tensors nobody reads
    (the Adam state of a training checkpoint, ~2/3 of the authors' files) are never paged in."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as error:
        cause = _weights_only_cause(error)
        if "GLOBAL" in cause.upper() and "unsupported" in cause.lower():
            raise CheckpointError(
                f"{path}: refused to load: the file holds Python objects that torch.load(weights_only=True) will "
                f"not unpickle, since that could run arbitrary code ({cause}). Save only tensors, e.g. "
                f"torch.save(model.state_dict(), path)"
            ) from error
        raise CheckpointError(
            f"{path} is not a readable torch checkpoint (corrupted or not a torch file): {cause}"
        ) from error
    except Exception as error:  # zip, EOF and storage errors of a damaged or foreign file
        raise CheckpointError(
            f"{path} is not a readable torch checkpoint (truncated, corrupted or not a torch file): "
            f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        ) from error


def _safetensors_load(path: Path) -> StateDict:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as error:  # safetensors raises its own SafetensorError for damaged headers / data
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupted): {error}") from error


def _is_state_dict(obj: object) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _unwrap(obj: object, path: Path, *, depth: int = 0) -> tuple[StateDict, str | None]:
    """The state dict inside a checkpoint object, and the wrapper key it was found under (None: top level)."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path} holds a {type(obj).__name__}, not a state dict (a mapping of parameter names to tensors)"
        )
    if _is_state_dict(obj):
        return dict(obj), None
    if depth < 2:
        for key in (*_EMA_KEYS, *_WRAPPER_KEYS):
            if isinstance(obj.get(key), Mapping):
                try:
                    inner, inner_key = _unwrap(obj[key], path, depth=depth + 1)
                except CheckpointError:
                    continue
                return inner, key if inner_key is None else f"{key}.{inner_key}"
    if not obj:
        raise CheckpointError(f"{path} holds an empty dict, not a state dict")
    tensors = [k for k, v in obj.items() if isinstance(v, torch.Tensor)]
    if tensors:
        bad = next(k for k, v in obj.items() if not isinstance(v, torch.Tensor))
        raise CheckpointError(
            f"{path} is not a dict of tensors: entry {bad!r} is a {type(obj[bad]).__name__} "
            f"({len(tensors)} of {len(obj)} entries are tensors)"
        )
    keys = ", ".join(repr(k) for k in list(obj)[:10])
    raise CheckpointError(
        f"{path} holds a dict without a state dict (keys {keys}); expected parameter name -> tensor entries, "
        f"or such a dict under one of {', '.join(repr(k) for k in (*_EMA_KEYS, *_WRAPPER_KEYS))}"
    )


def read_checkpoint_file(path: str | Path) -> tuple[StateDict, str | None]:
    """Tensors of a ``.pth/.pt/.bin`` (``torch.load``, weights only) or ``.safetensors`` file.

    Wrapped checkpoints (``{"state_dict": sd, "optimizer": ...}``, ``{"model": sd}``, EMA copies, which are
    preferred) are unwrapped. Returns the state dict and the wrapper key used (None when the file is a
    plain state dict). Raises FileNotFoundError / IsADirectoryError, or :class:`CheckpointError` for a file
    that cannot be read, refuses weights_only loading, or holds no state dict.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint file {path} does not exist")
    if path.is_dir():
        raise IsADirectoryError(
            f"{path} is a folder, not a checkpoint file (a ditsam folder loads with DITSam.from_pretrained "
            f"or load_checkpoint)"
        )
    if path.suffix == ".safetensors":
        return _unwrap(_safetensors_load(path), path)
    state_dict, wrapper = _unwrap(_torch_load(path), path)
    if wrapper is not None:
        logger.info("%s: using the state dict stored under %r", path, wrapper)
    return state_dict, wrapper


def _strip_module_prefix(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Remove the ``module.`` prefix that DDP / DataParallel put on every key."""
    stripped: StateDict = {}
    for key, value in state_dict.items():
        name = key
        while name.startswith("module."):
            name = name[len("module.") :]
        if name in stripped:
            raise CheckpointError(f"key {key!r} collides with another key once the 'module.' prefix is removed")
        stripped[name] = value
    return stripped


# ---------------------------------------------------------------------------------------------------
# Matching a state dict (in our names) against a model
# ---------------------------------------------------------------------------------------------------
def _backbone_of_state_dict(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """vit_b / vit_l / vit_h (or a custom description) from the patch-embedding width and the block count."""
    patch = state_dict.get("image_encoder.patch_embed.proj.weight")
    blocks = [int(m.group(1)) for m in (_BLOCK.match(k) for k in state_dict) if m]
    if patch is None or not blocks:
        return None
    width, depth = int(patch.shape[0]), max(blocks) + 1
    for name, size in BACKBONES.items():
        if size.embed_dim == width and size.depth == depth:
            return name
    return f"a custom ViT (width {width}, {depth} blocks)"


def _backbone_of_config(config: DITSamConfig) -> str:
    if config.backbone != "custom":
        return config.backbone
    return f"a custom ViT (width {config.size.embed_dim}, {config.size.depth} blocks)"


def _fit_shape(key: str, tensor: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor | None:
    """``tensor`` resized to ``shape`` when ``key`` is a position table that may be resized, else None."""
    if (
        key == _POS_EMBED
        and tensor.ndim == 4
        and len(shape) == 4
        and tensor.shape[0] == 1
        and tensor.shape[3] == shape[3]
    ):
        return resize_absolute_position_embedding(tensor, (shape[1], shape[2]))
    if _REL_POS.fullmatch(key) and tensor.ndim == 2 and len(shape) == 2 and tensor.shape[1] == shape[1]:
        return resize_relative_position_table(tensor, shape[0])
    return None


def _listing(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _unexpected_hints(keys: list[str], config: DITSamConfig) -> list[str]:
    hints = []
    layers = sorted({int(m.group(1)) for m in (_DECODER_LAYER.match(k) for k in keys) if m})
    if layers:
        hints.append(
            f"the checkpoint's mask decoder has {layers[-1] + 1} two-way layers: set extra_decoder_layers: "
            f"{layers[-1] + 1 - SAM_DECODER_LAYERS} (now {config.extra_decoder_layers})"
        )
    writers = sorted({int(m.group(1)) for m in (_WRITER.fullmatch(k) for k in keys) if m})
    if writers and config.injection == "e2e":
        hints.append(
            "the checkpoint refreshes the E-DIT text tokens before every block (reference image_encoder_e2e.py): "
            "set refine_text_per_layer: true"
        )
    elif writers:
        hints.append(f"the checkpoint has text projections for DIT, but the config says injection: {config.injection}")
    if any(k.startswith(_TEXT_PREFIX) for k in keys):
        hints.append(
            "the checkpoint's BERT has more layers/parameters than the configured text encoder (text.name_or_path)"
        )
    return hints


def first_non_finite(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """A sentence naming the first floating-point tensor of ``state_dict`` that holds NaN or infinite
    values (how many of each), or None when every value is finite."""
    for key, tensor in state_dict.items():
        if not tensor.is_floating_point():
            continue
        finite = torch.isfinite(tensor)
        if bool(finite.all()):
            continue
        bad, nan = int((~finite).sum()), int(torch.isnan(tensor).sum())
        return (
            f"tensor {key} {tuple(tensor.shape)} holds {bad} non-finite value(s) ({nan} NaN, {bad - nan} inf); "
            f"expected finite weights (damaged file, or saved from a diverged run): refusing to load it"
        )
    return None


def _apply(
    model: DITSam,
    state_dict: Mapping[str, torch.Tensor],
    *,
    kind: str,
    source: str,
    classify_missing: Callable[[str], str | None],
    allow_resize: bool = True,
    ignored: list[str] | None = None,
    notes: list[str] | None = None,
) -> LoadReport:
    """Check ``state_dict`` (already in our names) against ``model``, then load it.

    ``classify_missing(key)`` says what a model key absent from the checkpoint is: "fresh", "kept",
    "zero" (a rel-pos table: zeroed, i.e. no bias, reported fresh) or None (an error). Nothing is written
    to the model unless every check passes.
    """
    target = model.state_dict()
    config = model.config
    to_load: StateDict = {}
    resized: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []
    unexpected: list[str] = []
    for key, tensor in state_dict.items():
        if key not in target:
            unexpected.append(key)
            continue
        have, want = tuple(tensor.shape), tuple(target[key].shape)
        if have == want:
            to_load[key] = tensor
            continue
        fitted = _fit_shape(key, tensor, want) if allow_resize else None
        if fitted is None:
            mismatched.append((key, have, want))
        else:
            to_load[key] = fitted
            resized.append((key, have, want))

    if mismatched:
        details = "; ".join(
            f"{key}: {have} in the checkpoint, {want} in the model" for key, have, want in mismatched[:5]
        )
        more = f" (and {len(mismatched) - 5} more)" if len(mismatched) > 5 else ""
        message = f"{kind} checkpoint {source} does not fit the model: {details}{more}."
        found, wanted = _backbone_of_state_dict(state_dict), _backbone_of_config(config)
        if found is not None and found != wanted:
            message += f" The checkpoint looks like a {found} image encoder; the model is {wanted}."
        raise CheckpointError(message)
    if unexpected:
        hints = _unexpected_hints(unexpected, config)
        found, wanted = _backbone_of_state_dict(state_dict), _backbone_of_config(config)
        if found is not None and found != wanted:
            hints.append(f"the checkpoint looks like a {found} image encoder; the model is {wanted}")
        raise CheckpointError(
            f"{kind} checkpoint {source} has {len(unexpected)} key(s) the model does not have: {_listing(unexpected)}"
            + "".join(f"; {hint}" for hint in hints)
        )

    fresh, kept, errors, zeroed = [], [], [], []
    for key, value in target.items():
        if key in state_dict or value.numel() == 0:
            continue
        category = classify_missing(key)
        if category == "fresh":
            fresh.append(key)
        elif category == "kept":
            kept.append(key)
        elif category == "zero":
            zeroed.append(key)
            fresh.append(key)
        else:
            errors.append(key)
    if errors:
        hints = []
        layers = sorted({int(m.group(1)) for m in (_DECODER_LAYER.match(k) for k in errors) if m})
        if layers:
            hints.append(
                f"; the model has mask-decoder layers {layers} that the checkpoint lacks (extra_decoder_layers)"
            )
        raise CheckpointError(
            f"{kind} checkpoint {source} lacks {len(errors)} key(s) of the model: {_listing(errors)}" + "".join(hints)
        )

    bad = first_non_finite(to_load)
    if bad is not None:  # loaded silently, such weights predict empty masks for every input
        raise CheckpointError(f"{kind} checkpoint {source}: {bad}")
    for key in zeroed:
        to_load[key] = torch.zeros_like(target[key])
    result = model.load_state_dict(to_load, strict=False)
    if result.unexpected_keys:  # cannot happen after the checks above
        raise CheckpointError(f"unexpected keys while loading {source}: {result.unexpected_keys}")
    report = LoadReport(
        source=source,
        kind=kind,
        loaded=[k for k in to_load if k not in zeroed],
        resized=resized,
        fresh=fresh,
        kept=kept,
        ignored=list(ignored or []),
        notes=list(notes or []),
    )
    if zeroed:
        report.notes.append(
            f"{len(zeroed)} rel-pos table(s) missing from the checkpoint were zeroed (no position bias)"
        )
    logger.info("%s", report)
    return report


# ---------------------------------------------------------------------------------------------------
# Official SAM
# ---------------------------------------------------------------------------------------------------
def _sam_missing(key: str) -> str | None:
    if key.startswith(_TEXT_PREFIX):
        return "kept"
    if key.startswith(_INJECTION_PREFIX) or not key.startswith(SAM_PREFIXES):
        return "fresh"
    layer = _DECODER_LAYER.match(key)
    if layer is not None and int(layer.group(1)) >= SAM_DECODER_LAYERS:
        return "fresh"
    if _REL_POS.fullmatch(key):
        return "zero"
    return None


def load_sam_state_dict(
    model: DITSam, state_dict: Mapping[str, torch.Tensor], *, source: str = "<state dict>"
) -> LoadReport:
    """Load an official SAM state dict (or a transformers ``SamModel`` one) into ``model``'s SAM parts.

    Strict on SAM keys: every checkpoint key must exist in the model; every ``image_encoder.*``,
    ``prompt_encoder.*``, ``mask_decoder.*`` key of the model must be in the checkpoint, except the text
    injection and decoder layers beyond SAM's two (fresh) and rel-pos tables (zeroed = no bias, reported);
    shapes must match except ``pos_embed`` and the rel-pos tables, which are resized. The BERT is kept.
    """
    from ditsam.model.sam.hf_names import hf_sam_to_official

    state_dict = _strip_module_prefix(state_dict)
    notes: list[str] = []
    if any(k.startswith(("vision_encoder.", "shared_image_embedding.")) for k in state_dict):
        try:
            state_dict = hf_sam_to_official(state_dict)
        except ValueError as error:
            raise CheckpointError(f"{source}: {error}") from error
        notes.append("renamed from transformers SamModel names")
    if any(k.startswith(("visual_encoder.", "lang_encoder.")) for k in state_dict):
        raise CheckpointError(
            f"{source} is a reference DIT checkpoint (visual_encoder.* / lang_encoder.* keys), not a SAM one: "
            f"use load_reference_checkpoint or load_checkpoint"
        )
    if any(k.startswith(_TEXT_PREFIX) for k in state_dict):
        raise CheckpointError(
            f"{source} is a full DITSam state dict (text_encoder.* keys), not a SAM one: use load_checkpoint"
        )
    return _apply(model, state_dict, kind="sam", source=source, classify_missing=_sam_missing, notes=notes)


def load_sam_checkpoint(model: DITSam, path: str | Path) -> LoadReport:
    """Load an official SAM checkpoint file (``sam_vit_{b,l,h}_*.pth``) into ``model``; see :func:`load_sam_state_dict`.

    Raises FileNotFoundError for a missing file and :class:`CheckpointError` (a ValueError) for an
    unreadable file, a file without a state dict, or one that does not fit the model (the message names
    the keys, their shapes and the backbone the checkpoint looks like).
    """
    state_dict, _ = read_checkpoint_file(path)
    return load_sam_state_dict(model, state_dict, source=str(path))


# ---------------------------------------------------------------------------------------------------
# Reference DIT (wysnzzzz/DIT)
# ---------------------------------------------------------------------------------------------------
_REF_PROBS = re.compile(r"visual_encoder\.probs\.(\d+)\.(weight|bias)")
_REF_SINGLE_PROBS = re.compile(r"visual_encoder\.probs\.(weight|bias)")
_REF_PROB_TEXT = re.compile(r"visual_encoder\.prob_text\.(weight|bias)")
_REF_BERT = re.compile(r"lang_encoder\.(?:bert|lang_encoder)\.(.+)")
_REF_IGNORED = re.compile(r"query_embeddings|self_attention\..+|lang_encoder\.(?:bert|lang_encoder)\.pooler\..+")
_REF_UNSUPPORTED: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"visual_encoder\.tokens"), "the *_token variants (learned tensors added to the text positions)"),
    (
        re.compile(r"visual_encoder\.(cross|ln)\..+"),
        "the cross-attention variants (BERT features querying the ViT's text tokens)",
    ),
    (re.compile(r"visual_encoder\.(sas|adapter|gate)\..+"), "an experimental variant of the reference code"),
)


def _bert_name(rest: str) -> str:
    """pytorch_pretrained_bert -> transformers BertModel names (old LayerNorm.gamma/beta)."""
    return re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", rest))


def _fold(
    outer: tuple[torch.Tensor, torch.Tensor], inner: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """One Linear equal to ``outer(inner(x))``: (W_o W_i, W_o b_i + b_o), computed in float64."""
    (w_out, b_out), (w_in, b_in) = outer, inner
    weight = w_out.double() @ w_in.double()
    bias = w_out.double() @ b_in.double() + b_out.double()
    return weight.to(w_out.dtype), bias.to(b_out.dtype)


def _convert_reference(
    state_dict: Mapping[str, torch.Tensor], config: DITSamConfig
) -> tuple[StateDict, list[str], list[str]]:
    """Rename a reference state dict; returns (our state dict, ignored keys, notes). No resizing."""
    state_dict = _strip_module_prefix(state_dict)
    converted: StateDict = {}
    ignored: list[str] = []
    notes: list[str] = []
    probs: dict[int, dict[str, torch.Tensor]] = {}
    single: dict[str, torch.Tensor] = {}
    prob_text: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        for pattern, variant in _REF_UNSUPPORTED:
            if pattern.fullmatch(key):
                raise CheckpointError(
                    f"reference key {key!r} belongs to {variant}, which ditsam does not implement; "
                    f"only the layer-wise (L-DIT), end-to-end (E-DIT) and decoder-only variants convert"
                )
        if _REF_IGNORED.fullmatch(key):
            ignored.append(key)
        elif match := _REF_PROBS.fullmatch(key):
            probs.setdefault(int(match.group(1)), {})[match.group(2)] = tensor
        elif match := _REF_SINGLE_PROBS.fullmatch(key):
            single[match.group(1)] = tensor
        elif match := _REF_PROB_TEXT.fullmatch(key):
            prob_text[match.group(1)] = tensor
        elif match := _REF_BERT.fullmatch(key):
            converted[_TEXT_PREFIX + "bert." + _bert_name(match.group(1))] = tensor
        elif key.startswith("visual_encoder."):
            converted["image_encoder." + key[len("visual_encoder.") :]] = tensor
        elif key.startswith(("prompt_encoder.", "mask_decoder.", "text_proj.")):
            converted[key] = tensor
        else:
            raise CheckpointError(
                f"unknown key {key!r} in a reference DIT checkpoint (expected visual_encoder.*, prompt_encoder.*, "
                f"mask_decoder.*, text_proj.*, lang_encoder.*)"
            )

    if single and probs:
        raise CheckpointError("reference checkpoint has both visual_encoder.probs and visual_encoder.probs.N")
    if single:
        probs = {0: single}
    for index, parts in sorted(probs.items()):
        if set(parts) != {"weight", "bias"}:
            raise CheckpointError(
                f"reference projection visual_encoder.probs.{index} lacks its {'weight' if 'bias' in parts else 'bias'}"
            )
    if prob_text and set(prob_text) != {"weight", "bias"}:
        raise CheckpointError("reference visual_encoder.prob_text lacks its weight or bias")
    if (probs or prob_text) and config.injection not in ("layerwise", "e2e"):
        raise CheckpointError(
            f"the reference checkpoint injects text into the ViT (visual_encoder.probs*), but the model is built "
            f"with injection: {config.injection}; use injection: layerwise (image_encoder_layer_wise.py) "
            f"or e2e (image_encoder_e2e.py)"
        )
    shared = (prob_text["weight"], prob_text["bias"]) if prob_text else None
    if shared is not None:
        notes.append("visual_encoder.prob_text folded into the text projections (ViT-H layout): equal up to rounding")
    for index, parts in sorted(probs.items()):
        weight, bias = parts["weight"], parts["bias"]
        # Which projections read the BERT features (and so absorb prob_text): all for L-DIT, the first for E-DIT.
        reads_text = config.injection == "layerwise" or index == 0
        if shared is not None and reads_text:
            weight, bias = _fold((weight, bias), shared)
        prefix = f"{_INJECTION_PREFIX}writers.{index}.proj."
        converted[prefix + "weight"], converted[prefix + "bias"] = weight, bias
    if config.injection in ("layerwise", "e2e") and config.static_tokens == 0:
        # Our token injections always own a (possibly empty) static-token table; the reference has none.
        converted[_INJECTION_PREFIX + "static_tokens"] = torch.zeros(0, config.size.embed_dim)
    return converted, ignored, notes


def convert_reference_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: DITSamConfig, *, resize: bool = True
) -> StateDict:
    """A reference-DIT state dict (``module.`` prefix allowed) in our names, for a DITSam built from ``config``.

    ``visual_encoder.`` -> ``image_encoder.``, ``probs`` -> ``image_encoder.injection.writers.{i}.proj``
    (``prob_text`` folded in), ``lang_encoder.bert.`` -> ``text_encoder.bert.`` (``gamma/beta`` ->
    ``weight/bias``); unused reference parameters are dropped. With ``resize`` the position tables are
    resized to ``config``'s grid and attention layout, so the result loads with ``strict=True``.
    """
    converted, _, _ = _convert_reference(state_dict, config)
    if not resize:
        return converted
    size = config.size
    head_dim = size.embed_dim // size.num_heads
    for key, tensor in list(converted.items()):
        if key == _POS_EMBED:
            shape: tuple[int, ...] = (1, config.grid, config.grid, size.embed_dim)
        elif match := _REL_POS.fullmatch(key):
            block = int(match.group(1))
            is_global = config.attention == "global" or block in size.global_attn_indexes
            shape = (2 * (config.grid if is_global else config.window_size) - 1, head_dim)
        else:
            continue
        if tuple(tensor.shape) != shape:
            fitted = _fit_shape(key, tensor, shape)
            if fitted is None:
                raise CheckpointError(f"{key}: {tuple(tensor.shape)} in the checkpoint cannot be resized to {shape}")
            converted[key] = fitted
    return converted


def _reference_notes(config: DITSamConfig) -> list[str]:
    """Settings of ``config`` that differ from what the reference code runs (outputs will differ)."""
    notes = []
    if config.attention != "global":
        notes.append("the reference runs every ViT block with global attention; this model uses windowed blocks")
    if config.mask_text_padding:
        notes.append("the reference attends to [PAD] tokens; this model masks them (mask_text_padding: true)")
    if config.text.hidden_layer != 1:
        notes.append(
            f"the reference feeds BERT's first layer; this model uses text.hidden_layer={config.text.hidden_layer}"
        )
    if config.multimask_output:
        notes.append("the reference predicts one mask (token 0); this model has multimask_output: true")
    if not config.upsample_align_corners:
        notes.append("the reference upsamples with align_corners=True; this model uses False")
    if config.image_size != REFERENCE_IMAGE_SIZE:
        notes.append(f"the reference runs at {REFERENCE_IMAGE_SIZE} px; this model at {config.image_size}")
    if config.text.max_tokens != REFERENCE_MAX_TOKENS:
        notes.append(f"the reference uses {REFERENCE_MAX_TOKENS} text tokens; this model {config.text.max_tokens}")
    return notes


def load_reference_state_dict(
    model: DITSam, state_dict: Mapping[str, torch.Tensor], *, source: str = "<state dict>"
) -> LoadReport:
    """Load a reference-DIT state dict into ``model``: renamed as :func:`convert_reference_state_dict`,
    position tables resized, strict on every other key (only zero-size parameters may be absent)."""
    converted, ignored, notes = _convert_reference(state_dict, model.config)
    differences = _reference_notes(model.config)
    for note in differences:
        logger.warning("loading reference weights from %s: %s", source, note)
    return _apply(
        model,
        converted,
        kind="reference DIT",
        source=source,
        classify_missing=lambda key: None,
        ignored=ignored,
        notes=notes + differences,
    )


def load_reference_checkpoint(model: DITSam, path: str | Path) -> LoadReport:
    """Load a checkpoint written by the authors' trainer (``{'state_dict': ..., 'optimizer': ...}``, EMA
    weights, ``module.`` prefix) into ``model``; see the module docstring for the layout."""
    state_dict, _ = read_checkpoint_file(path)
    return load_reference_state_dict(model, state_dict, source=str(path))


def to_reference_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    config: DITSamConfig,
    *,
    prefix: str = "module.",
    old_bert_names: bool = False,
) -> StateDict:
    """Our state dict in the reference code's names (the inverse of :func:`convert_reference_state_dict`).

    For side-by-side runs with the authors' code and for tests. Tensors keep our shapes (the reference
    resizes position tables at run time). ``old_bert_names`` writes ``LayerNorm.gamma/beta``. Only
    what the reference can express converts: L-DIT / E-DIT with text width = ViT width, no static tokens.
    """
    if config.injection not in ("none", "layerwise", "e2e"):
        raise ValueError(f"the reference code has no equivalent of injection: {config.injection}")
    result: StateDict = {}
    for key, tensor in state_dict.items():
        if key.startswith(_TEXT_PREFIX + "bert."):
            rest = key[len(_TEXT_PREFIX + "bert.") :]
            if old_bert_names:
                rest = re.sub(
                    r"LayerNorm\.weight$", "LayerNorm.gamma", re.sub(r"LayerNorm\.bias$", "LayerNorm.beta", rest)
                )
            name = "lang_encoder.bert." + rest
        elif key == _INJECTION_PREFIX + "static_tokens":
            if tensor.numel():
                raise ValueError("the reference code has no static tokens (static_tokens must be 0)")
            continue
        elif match := _WRITER.fullmatch(key):
            if tensor.ndim == 2 and tensor.shape[0] != tensor.shape[1]:
                raise ValueError(
                    f"{key} maps {tensor.shape[1]} -> {tensor.shape[0]}: the reference's probs are square "
                    f"(text width = ViT width)"
                )
            name = f"visual_encoder.probs.{match.group(1)}.{match.group(2)}"
        elif key.startswith(_INJECTION_PREFIX):
            raise ValueError(f"{key} has no equivalent in the reference code")
        elif key.startswith("image_encoder."):
            name = "visual_encoder." + key[len("image_encoder.") :]
        else:
            name = key
        result[prefix + name] = tensor
    return result


# ---------------------------------------------------------------------------------------------------
# Our folder format
# ---------------------------------------------------------------------------------------------------
def _read_directory(directory: Path) -> tuple[DITSamConfig, Path, Path]:
    """Validate a save_pretrained folder; returns (config with text.name_or_path set, text dir, weights file)."""
    if not directory.exists():
        raise FileNotFoundError(f"no ditsam checkpoint folder at {directory}")
    if not directory.is_dir():
        raise NotADirectoryError(
            f"{directory} is a file, not a ditsam checkpoint folder "
            f"(SAM / reference .pth files load with load_checkpoint)"
        )
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"checkpoint folder without config: {config_path} is missing")
    try:
        payload = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{config_path} is not valid JSON: {error}") from error
    if not isinstance(payload, dict) or "model" not in payload or "format_version" not in payload:
        raise CheckpointError(f"{config_path} must be an object with 'format_version' and 'model' entries")
    unknown = sorted(set(payload) - {"format_version", "model"})
    if unknown:
        raise CheckpointError(f"{config_path}: unknown top-level key(s) {', '.join(unknown)}")
    version = payload["format_version"]
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
        raise CheckpointError(
            f"{config_path}: format_version {version!r} is not supported (this ditsam reads 1..{FORMAT_VERSION})"
        )
    try:
        config = DITSamConfig.from_dict(payload["model"], prefix="model.")
    except ConfigError as error:
        raise ConfigError(f"{config_path}: {error}") from error
    text_dir = directory / TEXT_DIR
    if not (text_dir / "config.json").is_file():
        raise FileNotFoundError(f"{text_dir}/config.json is missing: the folder lacks its text encoder config")
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing: the checkpoint folder has no weights")
    config.text.name_or_path = str(text_dir)
    return config, text_dir, weights


def _load_strict(model: DITSam, weights: Path) -> LoadReport:
    state_dict = _safetensors_load(weights)
    return _apply(
        model, state_dict, kind="ditsam", source=str(weights), classify_missing=lambda key: None, allow_resize=False
    )


def load_ditsam_directory(
    cls: type[DITSam], directory: str | Path, *, map_location: str | torch.device = "cpu"
) -> DITSam:
    """Build a model from a :meth:`DITSam.save_pretrained` folder, strictly, in eval mode on ``map_location``.

    The BERT architecture and tokenizer come from ``text_encoder/`` (``config.text.name_or_path`` points
    there), its weights from ``model.safetensors`` with the rest. Errors name the file: missing folder,
    ``config.json``, ``text_encoder/config.json`` or weights; unknown config keys; a corrupted or
    mismatching weights file.
    """
    model, _ = load_ditsam_directory_with_report(cls, directory)
    return model.to(map_location).eval()


def load_ditsam_directory_with_report(cls: type[DITSam], directory: str | Path) -> tuple[DITSam, LoadReport]:
    """:func:`load_ditsam_directory` on the CPU, also returning the :class:`LoadReport` of the strict load."""
    directory = Path(directory)
    config, _, weights = _read_directory(directory)
    model = cls(config, load_text_weights=False)
    report = _load_strict(model, weights)
    return model, report


def _load_directory_into(model: DITSam, directory: Path) -> LoadReport:
    config, _, weights = _read_directory(directory)
    saved, current = config.to_dict(), model.config.to_dict()
    saved["text"].pop("name_or_path")
    current["text"].pop("name_or_path")
    differences = sorted(
        [k for k in saved if k != "text" and saved[k] != current[k]]
        + [f"text.{k}" for k in saved["text"] if saved["text"][k] != current["text"][k]]
    )
    report = _load_strict(model, weights)
    if differences:
        note = f"the model's config differs from the saved one in {', '.join(differences)}"
        logger.warning("%s: %s", directory, note)
        report.notes.append(note)
    return report


# ---------------------------------------------------------------------------------------------------
# Dispatch
# ---------------------------------------------------------------------------------------------------
def detect_format(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """ "reference", "ditsam" (a flat state dict of ours), "sam" (official or transformers names), or None."""
    keys = list(_strip_module_prefix(state_dict))
    if any(k.startswith(("visual_encoder.", "lang_encoder.")) for k in keys):
        return "reference"
    if any(k.startswith(_TEXT_PREFIX) for k in keys):
        return "ditsam"
    if any(k.startswith((*SAM_PREFIXES, "vision_encoder.", "shared_image_embedding.")) for k in keys):
        return "sam"
    return None


def load_any_state_dict(
    model: DITSam, state_dict: Mapping[str, torch.Tensor], *, source: str = "<state dict>"
) -> LoadReport:
    """Load a state dict of any known layout into ``model`` (see :func:`detect_format`): reference DIT,
    official / transformers SAM, or a flat DITSam state dict (strict). ``source`` names it in messages."""
    kind = detect_format(state_dict)
    if kind == "reference":
        return load_reference_state_dict(model, state_dict, source=source)
    if kind == "sam":
        return load_sam_state_dict(model, state_dict, source=source)
    if kind == "ditsam":
        return _apply(
            model,
            _strip_module_prefix(state_dict),
            kind="ditsam",
            source=source,
            classify_missing=lambda key: None,
            allow_resize=False,
        )
    raise CheckpointError(
        f"{source}: unknown checkpoint layout (first keys: {_listing(list(state_dict), 5)}); expected SAM "
        f"(image_encoder.*), reference DIT (visual_encoder.*) or DITSam (text_encoder.*) names"
    )


def load_checkpoint(model: DITSam, path: str | Path) -> LoadReport:
    """Load whatever ``path`` is into ``model``: a save_pretrained folder (strict; config differences are
    reported), a reference-DIT checkpoint (``visual_encoder.*``), an official / transformers SAM checkpoint
    (``image_encoder.*`` / ``vision_encoder.*``), or a flat DITSam state dict (strict)."""
    path = Path(path)
    if path.is_dir():
        return _load_directory_into(model, path)
    state_dict, _ = read_checkpoint_file(path)
    return load_any_state_dict(model, state_dict, source=str(path))
