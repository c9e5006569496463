"""ONNX export of a whole :class:`~ditsam.model.dit.DITSam` (BERT + ViT with text + decoder).

The exported graph (:class:`OnnxDITSam`) takes what the model itself sees:

- ``image``: (B, 3, S, S) float32 -- the normalised, centre-padded canvas of
  :meth:`ditsam.data.transforms.RISTransform.for_eval` (S = the model's ``image_size``);
- ``input_ids``: (B, T) int64 -- BERT token ids, [CLS] ... [SEP] [PAD]..., as the model's tokenizer
  writes them (T = ``text.max_tokens``, 20 for the paper's models; other T work too);
- ``attention_mask``: (B, T) int64 (1 = real token, 0 = padding), or bool when exported with
  ``attention_mask_dtype="bool"`` -- ONNX inputs have one fixed type, chosen at export;

and returns ``masks``: (B, M, S, S) float32 mask logits on the canvas (M = 1; 3 for a multimask
model) and ``iou``: (B, M) float32 predicted IoU. B and T are dynamic. Thresholding
(``sigmoid > 0.35``) and the mapping back to the original image (crop the padding, resize) stay
outside the graph -- see :func:`ditsam.data.transforms.restore_to_original`. Points / boxes are not
inputs of the graph (text prompts only).

Uses the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``), which handles this
model with dynamic batch and sequence axes. Models over 2 GB (ViT-H) are written with external data
files next to the ``.onnx`` (ONNX's protobuf limit). Needs the ``export`` extra
(``pip install ditsam[export]``: onnx, onnxruntime) for the check; the export itself needs only torch
(and the ``onnx`` package, which torch's exporter imports).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
from torch import nn

from ditsam.model.dit import DITSam, DITSamOutput
from ditsam.model.text import TokenizedText

logger = logging.getLogger(__name__)

INPUT_NAMES = ("image", "input_ids", "attention_mask")
OUTPUT_NAMES = ("masks", "iou")
# Third output of models with a no-target head (generalized RIS): (B,) presence logits.
PRESENCE_OUTPUT = "presence"
DEFAULT_OPSET = 17
EXAMPLE_SENTENCES = ("the left one", "a")  # two lengths, so padding is traced; short enough for any max_tokens >= 7


def output_names(model: DITSam) -> tuple[str, ...]:
    """The exported outputs: masks, iou, and presence for a model with a no-target head."""
    return OUTPUT_NAMES + ((PRESENCE_OUTPUT,) if model.config.no_target_head else ())


class OnnxDITSam(nn.Module):
    """forward(image (B,3,S,S) float, input_ids (B,T) int64, attention_mask (B,T) int64 | bool)
    -> (mask logits (B,M,S,S), iou (B,M)[, presence logits (B,)]). A thin wrapper: the model called
    with a TokenizedText; presence only for a model with a no-target head."""

    def __init__(self, model: DITSam) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        output = self.model(image, text=TokenizedText(input_ids, attention_mask.bool()))
        if output.presence_logits is not None:
            return output.logits, output.iou_predictions, output.presence_logits
        return output.logits, output.iou_predictions


def onnx_wrapper(model: DITSam) -> nn.Module:
    """The :class:`OnnxDITSam` module around ``model`` (set to eval mode)."""
    return OnnxDITSam(model.eval()).eval()


def example_inputs(
    model: DITSam, *, batch_size: int = 2, attention_mask_dtype: Literal["int64", "bool"] = "int64", seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image (B,3,S,S) random normal, input_ids (B,T), attention_mask (B,T)) for tracing / checking,
    tokenised by the model's own tokenizer (sentences of different lengths, so padding is exercised)."""
    generator = torch.Generator().manual_seed(seed)
    size = model.config.image_size
    sentences = [EXAMPLE_SENTENCES[i % len(EXAMPLE_SENTENCES)] for i in range(batch_size)]
    tokens = model.tokenizer(sentences)
    mask = tokens.attention_mask if attention_mask_dtype == "bool" else tokens.attention_mask.long()
    return torch.randn(batch_size, 3, size, size, generator=generator), tokens.input_ids, mask


@dataclasses.dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and how well onnxruntime matches PyTorch.

    max_abs_diff: largest |onnxruntime - torch| over both outputs on the check inputs (None when
    the check did not run); checked_with: why not, or the onnxruntime version.
    """

    path: Path
    opset: int
    size_bytes: int
    max_abs_diff: float | None
    checked_with: str

    def __str__(self) -> str:
        check = (
            f"max |onnxruntime - torch| = {self.max_abs_diff:.2e}"
            if self.max_abs_diff is not None
            else self.checked_with
        )
        return f"{self.path} (opset {self.opset}, {self.size_bytes / 1e6:.1f} MB): {check}"


def export_onnx(
    model: DITSam,
    path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    attention_mask_dtype: Literal["int64", "bool"] = "int64",
    verify: bool = True,
    atol: float = 1e-3,
) -> ExportReport:
    """Write ``model`` (on the CPU, float32, eval mode) as one ONNX file at ``path``.

    With ``verify`` the file is checked with ``onnx.checker`` and run by onnxruntime on inputs of
    another batch size than the traced ones; a difference over ``atol`` raises RuntimeError. Without
    onnxruntime installed the numerical check is skipped with a warning.
    """
    if attention_mask_dtype not in ("int64", "bool"):
        raise ValueError(f"attention_mask_dtype must be 'int64' or 'bool', got {attention_mask_dtype!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.to("cpu", torch.float32).eval()
    wrapper = onnx_wrapper(model)
    inputs = example_inputs(model, batch_size=2, attention_mask_dtype=attention_mask_dtype)
    dynamic_axes = {
        "image": {0: "batch"},
        "input_ids": {0: "batch", 1: "tokens"},
        "attention_mask": {0: "batch", 1: "tokens"},
        "masks": {0: "batch"},
        "iou": {0: "batch"},
        PRESENCE_OUTPUT: {0: "batch"},
    }
    names = output_names(model)
    dynamic_axes = {name: axes for name, axes in dynamic_axes.items() if name in INPUT_NAMES + names}
    logger.info("exporting %s to %s (opset %d)", type(model).__name__, path, opset)
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # Python-level shape checks become constants of the trace: expected, since only B and T vary
        # (verified by check_onnx on another batch size). aten::index only sees non-negative indices.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index operator")
        torch.onnx.export(
            wrapper,
            inputs,
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=list(INPUT_NAMES),
            output_names=list(names),
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
    size = path.stat().st_size  # without external data files (models over 2 GB)
    report = ExportReport(path=path, opset=opset, size_bytes=size, max_abs_diff=None, checked_with="not checked")
    if verify:
        report.max_abs_diff, report.checked_with = check_onnx(model, path, attention_mask_dtype=attention_mask_dtype)
        if report.max_abs_diff is not None and report.max_abs_diff > atol:
            raise RuntimeError(f"{path}: onnxruntime differs from PyTorch by {report.max_abs_diff:.3g} > atol {atol}")
    logger.info("%s", report)
    return report


def run_onnx(
    path: str | os.PathLike, image: np.ndarray, input_ids: np.ndarray, attention_mask: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Run an exported file with onnxruntime on the CPU: returns (masks (B,M,S,S), iou (B,M)), plus
    presence logits (B,) for a model with a no-target head."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return tuple(session.run(None, {"image": image, "input_ids": input_ids, "attention_mask": attention_mask}))


def check_onnx(
    model: DITSam,
    path: str | os.PathLike,
    *,
    attention_mask_dtype: Literal["int64", "bool"] = "int64",
    batch_size: int = 3,
) -> tuple[float | None, str]:
    """Compare onnxruntime with PyTorch on fresh inputs (batch ``batch_size``).

    Returns (max abs difference over masks and iou, "onnxruntime X.Y"), or (None, reason) when
    onnx / onnxruntime are not installed.
    """
    try:
        import onnx
        import onnxruntime
    except ImportError as error:
        reason = f"not checked: {error.name} is not installed (pip install 'ditsam[export]')"
        logger.warning("%s", reason)
        return None, reason
    onnx.checker.check_model(str(path))
    image, input_ids, attention_mask = example_inputs(
        model, batch_size=batch_size, attention_mask_dtype=attention_mask_dtype, seed=1
    )
    with torch.no_grad():
        expected = onnx_wrapper(model)(image, input_ids, attention_mask)
    got = run_onnx(path, image.numpy(), input_ids.numpy(), attention_mask.numpy())
    diff = max(float((torch.from_numpy(g) - e).abs().max()) for g, e in zip(got, expected))
    return diff, f"onnxruntime {onnxruntime.__version__}"


def exported_inputs(
    images: torch.Tensor, text: TokenizedText, *, mask_is_bool: bool = False, **prompts: Any
) -> dict[str, np.ndarray]:
    """The exported graph's inputs (:data:`INPUT_NAMES`) from ``images`` (B,3,S,S) and ``text`` (B,T) as numpy
    arrays; ``mask_is_bool``: the graph takes a bool attention mask. Raises ValueError for point / box
    ``prompts`` (the graph has no inputs for them)."""
    if any(value is not None for value in prompts.values()):
        raise ValueError(f"the exported model takes text prompts only, got {', '.join(sorted(prompts))}")
    mask = text.attention_mask.bool() if mask_is_bool else text.attention_mask.long()
    arrays = (images.detach().float().contiguous(), text.input_ids, mask)
    return {name: array.cpu().numpy() for name, array in zip(INPUT_NAMES, arrays)}


def exported_output(outputs: Sequence[np.ndarray]) -> DITSamOutput:
    """:class:`DITSamOutput` from the graph's outputs (:func:`output_names`: masks (B,M,S,S), iou (B,M), and a
    no-target head's presence (B,)); ``low_res_logits`` is not exported: None."""
    presence = torch.from_numpy(np.asarray(outputs[2])) if len(outputs) > len(OUTPUT_NAMES) else None
    return DITSamOutput(
        logits=torch.from_numpy(np.asarray(outputs[0])),
        low_res_logits=None,  # type: ignore[arg-type]
        iou_predictions=torch.from_numpy(np.asarray(outputs[1])),
        presence_logits=presence,
    )
