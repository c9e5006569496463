"""int8 inference on the CPU: ONNX Runtime's dynamic quantisation of the exported model.

:func:`quantize_model` exports a :class:`~ditsam.model.dit.DITSam` with :func:`ditsam.export.export_onnx`
(the whole model: BERT, the ViT with the text tokens, the decoder, the upsampling) and quantises it
with ``onnxruntime.quantization.quantize_dynamic``: the weights of every matrix product with a constant
weight (the linear layers of BERT, the ViT and the decoder: ~all of the model's FLOPs but attention)
become int8, and the activations entering them are quantised on the fly, per tensor, at every call.
Attention's own products (q k^T, weights v) stay in float32, as do the softmaxes, norms and the
upsampling. :class:`OnnxRunner` runs the result with ONNX Runtime; ``Segmenter(..., dtype="int8")`` uses it.

Text prompts only (the exported graph has no point or box inputs). Needs the ``int8`` extra
(``pip install ditsam[int8]``: onnx, onnxruntime). Speed and agreement with float32 on this project's
CPUs: ``benchmarks/int8_cpu.py`` and benchmarks/README.md.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ditsam.export import INPUT_NAMES, exported_inputs, exported_output
from ditsam.model.dit import DITSam, DITSamOutput
from ditsam.model.text import TokenizedText

logger = logging.getLogger(__name__)

# Operators whose constant weights are quantised: linear layers export as MatMul (+ Add) or Gemm.
QUANTIZED_OPS = ("MatMul", "Gemm")


def quantize_model(model: DITSam, path: str | os.PathLike, *, per_channel: bool = False) -> Path:
    """Write ``model`` as an int8 ONNX file at ``path`` (float32 export first, in a temporary folder).

    ``per_channel``: one scale per output channel of each weight instead of one per tensor.
    Returns ``path``. Raises ImportError naming the extra when onnx / onnxruntime are missing.
    """
    _quantizer()  # the missing extra is named before the export's minutes
    from ditsam.export import export_onnx

    with tempfile.TemporaryDirectory(prefix="ditsam-int8-") as folder:
        float_path = Path(folder) / "model_fp32.onnx"
        export_onnx(model, float_path, verify=False)
        return quantize_onnx(float_path, path, per_channel=per_channel)


def quantize_onnx(float_path: str | os.PathLike, path: str | os.PathLike, *, per_channel: bool = False) -> Path:
    """Quantise an exported float32 ONNX file (:func:`ditsam.export.export_onnx`) to int8 at ``path``: dynamic
    int8 of every :data:`QUANTIZED_OPS` product with a constant weight. Returns ``path``."""
    quantize_dynamic, weight_type = _quantizer()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    logger.info("quantising %s to int8 (%s)", Path(float_path).name, path)
    quantize_dynamic(
        str(float_path),
        str(path),
        weight_type=weight_type,
        op_types_to_quantize=list(QUANTIZED_OPS),
        per_channel=per_channel,
        # Only products with a constant weight: attention's activation-by-activation products stay float.
        extra_options={"MatMulConstBOnly": True},
    )
    return path


def _quantizer() -> tuple[Any, Any]:
    """ONNX Runtime's ``quantize_dynamic`` and its int8 weight type, or ImportError naming the extra."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as error:
        raise ImportError(f"int8 inference needs onnx and onnxruntime: pip install 'ditsam[int8]' ({error})") from error
    return quantize_dynamic, QuantType.QInt8


def int8_options(*, per_channel: bool = False) -> dict[str, Any]:
    """Everything besides the weights and the config that shapes the int8 graph (part of its cache key): the
    quantisation settings, the exporter's opset and the versions of the software that writes the graph."""
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError(f"int8 inference needs onnx and onnxruntime: pip install 'ditsam[int8]' ({error})") from error
    from ditsam import __version__
    from ditsam.export import DEFAULT_OPSET

    return {
        "per_channel": per_channel,
        "quantized_ops": list(QUANTIZED_OPS),
        "opset": DEFAULT_OPSET,
        "ditsam": __version__,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def int8_cache_key(model: DITSam, *, per_channel: bool = False) -> str:
    """The name of ``model``'s int8 entry in the cache (:func:`ditsam.int8_cache.cache_key`)."""
    from ditsam.int8_cache import cache_key

    return cache_key(model, int8_options(per_channel=per_channel))


def cached_int8_model(
    model: DITSam,
    *,
    cache_dir: str | os.PathLike | None = None,
    per_channel: bool = False,
    check: Any = None,
) -> Path:
    """``model``'s int8 ONNX file from the cache (:mod:`ditsam.int8_cache`; ``cache_dir`` or the default folder),
    quantised there once with :func:`quantize_model`; ``check(path)`` vets a cached file (see
    :func:`ditsam.int8_cache.cached_model`)."""
    from ditsam.int8_cache import cached_model

    return cached_model(
        model,
        options=int8_options(per_channel=per_channel),
        build=lambda path: quantize_model(model, path, per_channel=per_channel),
        cache_dir=cache_dir,
        check=check,
    )


class OnnxRunner:
    """An exported ONNX model (int8 from :func:`quantize_model`, or float from :func:`ditsam.export.export_onnx`) on
    ONNX Runtime's CPU provider.

    ``__call__(images (B,3,S,S) float32, text TokenizedText (B,T))`` -> :class:`DITSamOutput` with
    ``logits`` (B,M,S,S) and ``iou_predictions`` (B,M) (``low_res_logits`` is not exported: None).
    ``threads``: ONNX Runtime's intra-op threads (default: torch's thread count).
    """

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        self.path = Path(path)
        # The session holds the model in memory: the file may be deleted afterwards.
        self.session = onnxruntime.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        inputs = {item.name: item.type for item in self.session.get_inputs()}
        self.mask_is_bool = inputs.get(INPUT_NAMES[2]) == "tensor(bool)"

    @classmethod
    def int8(
        cls,
        model: DITSam,
        *,
        threads: int | None = None,
        per_channel: bool = False,
        cache: str | os.PathLike | bool | None = None,
    ) -> "OnnxRunner":
        """``model`` quantised (see :func:`quantize_model`) and loaded. ``cache``: None or True takes the int8
        model from the default cache folder, building it there once (:mod:`ditsam.int8_cache`); a path uses
        that folder; False quantises into a temporary file, every time."""
        from ditsam.int8_cache import load_cached

        return load_cached(
            model,
            options=int8_options(per_channel=per_channel),
            build=lambda path: quantize_model(model, path, per_channel=per_channel),
            load=lambda path: cls(path, threads=threads),
            cache=cache,
        )

    def __call__(self, images: torch.Tensor, text: TokenizedText, **prompts: Any) -> DITSamOutput:
        inputs = exported_inputs(images, text, mask_is_bool=self.mask_is_bool, **prompts)
        return exported_output(self.session.run(None, inputs))
