"""OpenVINO inference on the CPU: ``Segmenter(dtype="openvino")``.

The model is exported to ONNX (:func:`ditsam.export.export_onnx`: BERT, the ViT with the text tokens, the
decoder, the upsampling) once, into the exported-model cache (:mod:`ditsam.int8_cache`, keyed by the weights,
the config, the opset and the software versions), and compiled by OpenVINO for the CPU with its latency hint.
OpenVINO picks its own inference precision: bf16 on a CPU with AMX-BF16 / AVX512-BF16 (where it runs the
light EfficientSAM backbones 1.4-1.6x faster than PyTorch's bf16 autocast, and ViT-B / L about as fast), float32
elsewhere; ``OpenVinoRunner(precision="f32")`` forces float32. Measured in benchmarks/README.md ("CPU
backends"). Text prompts only (the exported graph has no point or box inputs). Needs the ``openvino`` extra
(``pip install 'ditsam[openvino]'``: onnx, openvino).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ditsam.export import INPUT_NAMES, exported_inputs, exported_output
from ditsam.model.dit import DITSam, DITSamOutput
from ditsam.model.text import TokenizedText

#: The float32 export's file name in its cache entry.
FLOAT_MODEL_FILE = "model.onnx"
#: OpenVINO's configuration of one compiled model: answer one request at a time, fast.
LATENCY_HINT = {"PERFORMANCE_HINT": "LATENCY"}


def _openvino() -> Any:
    try:
        import openvino
    except ImportError as error:
        raise ImportError(
            f"dtype='openvino' needs onnx and openvino: pip install 'ditsam[openvino]' ({error})"
        ) from error
    return openvino


def float_export_options() -> dict[str, Any]:
    """What besides the weights and the config shapes the float32 export (part of its cache key)."""
    from ditsam import __version__
    from ditsam.export import DEFAULT_OPSET

    return {"export": "onnx_fp32", "opset": DEFAULT_OPSET, "ditsam": __version__, "torch": torch.__version__}


class OpenVinoRunner:
    """An exported ONNX file compiled by OpenVINO for the CPU, called as :class:`ditsam.int8.OnnxRunner` is.

    ``__call__(images (B,3,S,S) float32, text TokenizedText (B,T))`` -> :class:`DITSamOutput` with ``logits``
    (B,M,S,S) and ``iou_predictions`` (B,M) (``low_res_logits``: None). ``threads``: OpenVINO's inference
    threads (default: torch's thread count); ``precision``: None keeps OpenVINO's choice (``self.precision``
    says which: "bf16" on a CPU with bf16 hardware, else "f32"), ``"f32"`` forces float32.
    """

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None, precision: str | None = None) -> None:
        openvino = _openvino()
        config: dict[str, Any] = {**LATENCY_HINT, "INFERENCE_NUM_THREADS": threads or torch.get_num_threads()}
        if precision is not None:
            config["INFERENCE_PRECISION_HINT"] = precision
        self.path = Path(path)
        self.compiled = openvino.Core().compile_model(str(self.path), "CPU", config)
        self.precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self.request = self.compiled.create_infer_request()
        self.mask_is_bool = self.compiled.input(INPUT_NAMES[2]).get_element_type().get_type_name() == "boolean"

    @classmethod
    def for_model(
        cls,
        model: DITSam,
        *,
        threads: int | None = None,
        precision: str | None = None,
        cache: str | os.PathLike | bool | None = None,
    ) -> "OpenVinoRunner":
        """``model`` exported (taken from the cache when it is there) and compiled. ``cache``: None or True uses
        the default cache folder (:func:`ditsam.int8_cache.default_cache_dir`), a path that folder, False a
        temporary file exported every time."""
        from ditsam.export import export_onnx
        from ditsam.int8_cache import load_cached

        _openvino()  # the missing extra is named before the export's minutes
        return load_cached(
            model,
            options=float_export_options(),
            build=lambda path: export_onnx(model, path, verify=False),
            load=lambda path: cls(path, threads=threads, precision=precision),
            cache=cache,
            file_name=FLOAT_MODEL_FILE,
        )

    def __call__(self, images: torch.Tensor, text: TokenizedText, **prompts: Any) -> DITSamOutput:
        inputs = exported_inputs(images, text, mask_is_bool=self.mask_is_bool, **prompts)
        outputs = self.request.infer(inputs)
        return exported_output([outputs[port] for port in self.compiled.outputs])
