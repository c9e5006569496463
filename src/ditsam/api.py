"""The user-facing predictor: an image and a sentence in, a mask at the image's own size out.

    from ditsam import Segmenter

    seg = Segmenter.from_pretrained("runs/refcoco_ldit/checkpoints/best")   # device: cuda if available
    # also: a Hub id "owner/name", or the authors' released L-DIT file "ldit_refcoco.pth" (no config needed)
    result = seg.predict("photo.jpg", "the man on the left")
    result.mask      # bool (H, W) at the ORIGINAL image size
    result.score     # the model's IoU prediction for that mask (a float, roughly 0..1)
    result.logits    # float32 (H, W) mask logits at the original size (sigmoid > threshold = mask)

    seg.predict("photo.jpg", ["the man on the left", "the dog"])   # one image, several sentences -> list
    seg.predict(["a.jpg", "b.png"], "the red car")                   # several images, one sentence -> list
    seg.predict(["a.jpg", "b.png"], ["the red car", "a tree"])       # pairs -> list

Images (``image``): a file path (EXIF orientation applied, any mode PIL reads, alpha dropped: see
:func:`ditsam.data.sample.load_image`), a ``PIL.Image`` (used as given: no EXIF rotation; converted
to RGB the same way), or a numpy array: ``(H, W)`` grayscale, ``(H, W, 1)``, ``(H, W, 3)`` RGB or
``(H, W, 4)`` RGBA (alpha dropped), dtype ``uint8`` (0..255), ``bool`` or float (0..1; values outside
are an error, not clipped). Every image is resized (long side to the model's input size, 512 for
the paper's models), centre-padded and ImageNet-normalised exactly as in evaluation
(:meth:`ditsam.data.transforms.RISTransform.for_eval`), and the logits are mapped back to the
original pixels (:func:`~ditsam.data.transforms.restore_to_original`) before thresholding.

Cost model -- unlike SAM: SAM encodes an image once and answers every prompt with its light
decoder. Here the sentence lives *inside* the image encoder (that is what deep instruction tuning
is), so every new sentence needs a new pass through the ViT. What is shared for one image with
several sentences: the image is read and preprocessed once, and the sentences go through the
encoder as one batch (``batch_size`` at a time).

Points and boxes (``points=``, ``boxes=``) are SAM prompts in ORIGINAL image pixel coordinates,
mapped onto the model canvas with the image's :class:`~ditsam.data.transforms.TransformMeta`
(:meth:`~ditsam.data.transforms.TransformMeta.to_canvas`). They are only meaningful for a model trained with them (Table 4
"Mix", ``train.prompt_mix``); a text-only model has never seen point or box tokens and ignores
or misreads them.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import TYPE_CHECKING, Any, Hashable, Sequence

import numpy as np

from ditsam.data.images import DEFAULT_MAX_PIXELS, ImageInput, bgr_to_rgb, check_image_format, read_image
from ditsam.defaults import MASK_THRESHOLD, check_threshold
from ditsam.inference.devices import (
    AUTO_DEVICE,
    AUTO_DTYPE,
    exported_backend,
    resolve_device,
    resolve_device_for,
    resolve_dtype,
)
from ditsam.inference.jobs import Job, Prepared, chunk_jobs, make_jobs
from ditsam.inference.prompts import BoxInput, PointsInput
from ditsam.inference.result import SegmentationResult

if TYPE_CHECKING:  # heavy imports stay out of `import ditsam.api`
    import torch
    from PIL import Image

    from ditsam.model.config import DITSamConfig
    from ditsam.model.dit import DITSam

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "BoxInput",
    "ImageInput",
    "PointsInput",
    "SegmentationResult",
    "Segmenter",
    "read_image",
    "resolve_device",
    "resolve_dtype",
]

logger = logging.getLogger(__name__)


class Segmenter:
    """Text-prompted segmentation with a :class:`~ditsam.model.dit.DITSam` (see the module docstring).

    Build with :meth:`from_pretrained`, or wrap a model: ``Segmenter(model, device=..., dtype=...)``.

    Args (keyword-only besides ``model``):
        device: where the model runs; ``"auto"`` (the default; None means it too): CUDA, then MPS, then the
            CPU, the choice said once in the log.
        dtype: ``"auto"`` (the default): bf16 autocast where the device does bf16 in hardware (a CUDA GPU
            with bf16, a CPU with AMX-BF16 or AVX512-BF16), float32 elsewhere, said once in the log (see
            :mod:`ditsam.inference.devices`). ``None`` / ``torch.float32`` (full precision) or
            ``torch.bfloat16`` (autocast on CPU and GPU; weights stay float32); ``torch.float16`` (autocast,
            GPU) also works. ``"int8"``:
            the CPU only, text prompts only: the model is exported and quantised to int8 with ONNX
            Runtime (~1 minute for ViT-B; see :mod:`ditsam.int8`; needs ``pip install ditsam[int8]``) once,
            into a cache keyed by the weights, config and export options, and loaded from there afterwards.
            ``"openvino"``: the CPU only, text prompts only: the float32 ONNX export (cached the same way) compiled
            by OpenVINO, in bf16 on a CPU with bf16 hardware (see :mod:`ditsam.openvino_backend`; needs
            ``pip install ditsam[openvino]``); the fastest path measured for the EfficientSAM backbones there.
        int8_cache: with ``dtype="int8"`` or ``"openvino"``: the exported model's cache folder (None:
            ``$DITSAM_INT8_CACHE``, else ``$TORCH_HOME/hub/ditsam-int8``; see :mod:`ditsam.int8_cache`), or
            False to export afresh without storing anything.
        threshold: a pixel is foreground where ``sigmoid(logit) > threshold`` (paper / reference: 0.35).
        max_pixels: images with more pixels are refused with a clear error before they are decoded
            (``None``: no limit besides PIL's own, about 179 megapixels).
        batch_size: sentences (image-sentence pairs) per forward pass.
    """

    def __init__(
        self,
        model: "DITSam",
        *,
        device: "torch.device | str | None" = AUTO_DEVICE,
        dtype: "torch.dtype | str | None" = AUTO_DTYPE,
        threshold: float = MASK_THRESHOLD,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        batch_size: int = 8,
        int8_cache: str | os.PathLike | bool | None = None,
    ) -> None:
        from ditsam.data.transforms import RISTransform, TransformConfig

        check_threshold(threshold)
        if max_pixels is not None and max_pixels < 1:
            raise ValueError(f"max_pixels must be positive or None, got {max_pixels}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        backend = exported_backend(dtype)
        self.device = resolve_device_for(device, dtype)
        self.dtype = None if backend is not None else resolve_dtype(dtype, device=self.device)
        self.threshold = float(threshold)
        self.max_pixels = max_pixels
        self.batch_size = int(batch_size)
        self.model = model.to(self.device).eval()
        self.transform = RISTransform.for_eval(TransformConfig(input_size=model.config.image_size))
        self.backend = backend  # "int8" / "openvino": self.onnx runs the exported graph instead of the model
        self.onnx: Any = None  # an OnnxRunner (dtype="int8") or an OpenVinoRunner (dtype="openvino")
        self._warned_multimask = False  # multimask=True on a one-mask model is said once
        if backend == "int8":
            from ditsam.int8 import OnnxRunner

            self.onnx = OnnxRunner.int8(self.model, cache=int8_cache)
        elif backend == "openvino":
            from ditsam.openvino_backend import OpenVinoRunner

            self.onnx = OpenVinoRunner.for_model(self.model, cache=int8_cache)

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike,
        *,
        revision: str | None = None,
        injection: str | None = None,
        config: "DITSamConfig | None" = None,
        text_name_or_path: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        token: str | bool | None = None,
        local_files_only: bool = False,
        force_download: bool = False,
        device: "torch.device | str | None" = AUTO_DEVICE,
        dtype: "torch.dtype | str | None" = AUTO_DTYPE,
        threshold: float = MASK_THRESHOLD,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        batch_size: int = 8,
        int8_cache: str | os.PathLike | bool | None = None,
    ) -> "Segmenter":
        """A segmenter for a model from any source (:meth:`DITSam.from_pretrained
        <ditsam.model.dit.DITSam.from_pretrained>`):

        - a folder written by ``DITSam.save_pretrained`` (e.g. a training run's ``checkpoints/best``);
        - the authors' released checkpoints by name: ``"dit-refcoco"``, ``"dit-refcoco+"``, ``"dit-refcocog"``,
          ``"dit-grefcoco"`` (downloaded and converted once into torch's hub cache, then loaded from there);
        - a Hugging Face Hub id ``owner/name`` (``revision=`` a branch, tag or commit), from the Hub cache,
          downloaded when missing unless ``HF_HUB_OFFLINE=1``; ``owner/name/file.pth`` takes one file of it;
        - the authors' released DIT ``.pth`` with no config: the architecture is read from the weights,
          L-DIT unless ``injection="e2e"`` (or ``"none"``), BERT's config and tokenizer from
          ``text_name_or_path`` (default ``bert-base-uncased``, through the Hub cache);
        - any other checkpoint file holding every weight (a flat DITSam state dict), with ``config=``.

        ``revision``, ``token``, ``cache_dir``, ``local_files_only`` and ``force_download`` mean what they mean
        to transformers and huggingface_hub, for a Hub id. An official SAM checkpoint is refused: it holds no
        text model. Errors name the source: a missing
        folder or file, an unresolvable Hub id (FileNotFoundError), damaged weights or keys that do not
        match (:class:`~ditsam.model.checkpoints.CheckpointError`).
        """
        from ditsam.model.dit import DITSam

        resolve_device_for(device, dtype)  # an unusable device fails before loading
        model = DITSam.from_pretrained(
            source,
            revision=revision,
            injection=injection,
            config=config,  # type: ignore[arg-type]
            text_name_or_path=text_name_or_path,
            cache_dir=cache_dir,
            token=token,
            local_files_only=local_files_only,
            force_download=force_download,
        )
        return cls(
            model,
            device=device,
            dtype=dtype,
            threshold=threshold,
            max_pixels=max_pixels,
            batch_size=batch_size,
            int8_cache=int8_cache,
        )

    def __repr__(self) -> str:
        config = self.model.config
        return (
            f"Segmenter(injection={config.injection!r}, image_size={config.image_size}, device={str(self.device)!r}, "
            f"dtype={self.backend or self.dtype}, threshold={self.threshold}, max_pixels={self.max_pixels})"
        )

    @property
    def image_size(self) -> int:
        """Side S of the square model input."""
        return int(self.model.config.image_size)

    def read_image(self, image: ImageInput, *, what: str = "image") -> "Image.Image":
        """An accepted image input as RGB ``PIL.Image``, under this segmenter's ``max_pixels``
        (see :func:`read_image`)."""
        return read_image(image, max_pixels=self.max_pixels, what=what)

    def _autocast(self) -> contextlib.AbstractContextManager:
        import torch

        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    # -- predict ----------------------------------------------------------------------------------
    def predict(
        self,
        image: ImageInput | Sequence[ImageInput],
        text: str | Sequence[str] | None = None,
        *,
        points: PointsInput | Sequence[PointsInput | None] | None = None,
        boxes: BoxInput | Sequence[BoxInput | None] | None = None,
        threshold: float | None = None,
        multimask: bool = False,
        image_format: str = "RGB",
        progress: bool = False,
    ) -> SegmentationResult | list[SegmentationResult]:
        """Segment what ``text`` describes in ``image``.

        - one image (path, PIL image or numpy array -- not a list) and one sentence: a
          :class:`SegmentationResult`;
        - one image and a list of sentences: a list, one result per sentence (the image is
          preprocessed once, the sentences run through the encoder as a batch);
        - a list of images and one sentence: a list, one result per image;
        - a list of images and a list of sentences of the same length: a list, one result per pair.

        ``points``: ``(coords (N, 2), labels (N,))``, coords as x, y in ORIGINAL image pixels
        (continuous: pixel column i spans [i, i + 1)), labels 1 = foreground, 0 = background.
        ``boxes``: ``(x1, y1, x2, y2)`` in original pixels. With one image they apply to every
        sentence; with a list of images give a list with one entry (or None) per image. Only a
        model trained with point / box prompts ("Mix", or a SAM such as ``"refshapes-sam"``) uses them
        meaningfully; ``text=None`` prompts with them alone, as SAM is prompted.

        ``threshold`` overrides the segmenter's for this call; ``progress`` shows a tqdm bar.
        ``multimask=True`` asks the decoder for SAM's three masks: every result then carries ``masks``
        (3, H, W) and ``scores`` (3,), and ``mask`` / ``score`` are the one with the highest score (as SAM's
        ``multimask_output=True``; a model trained with one mask never trained the other three mask tokens,
        which is logged). ``image_format="BGR"``: numpy arrays hold their channels in BGR(A) order (OpenCV's,
        as ``SamPredictor.set_image(image, image_format="BGR")``); paths and PIL images are always read as RGB.
        Box convention: ``boxes`` in and :attr:`SegmentationResult.bbox_xyxy` out are both (x0, y0, x1, y1);
        :attr:`SegmentationResult.bbox` is COCO's (x, y, w, h) of it.
        Raises ValueError for an empty sentence or mismatched lengths, DataError naming the path for
        unreadable files or images over ``max_pixels``. Sentences longer than the model's token limit
        are truncated, with one warning.
        """
        threshold = self.threshold if threshold is None else check_threshold(threshold)
        bgr = check_image_format(image_format)
        self._check_multimask(multimask)
        jobs, single = make_jobs(image, text, points, boxes)
        results: list[SegmentationResult | None] = [None] * len(jobs)
        prepare = self._prepare_bgr if bgr else self._prepare
        chunks = chunk_jobs(jobs, batch_size=self.batch_size, prepare=prepare, progress=progress)
        for chunk, prepared in chunks:
            for job, result in zip(chunk, self._run(chunk, prepared, threshold, multimask=multimask)):
                results[job.index] = result
        out = [r for r in results if r is not None]
        assert len(out) == len(jobs)
        return out[0] if single else out

    def _check_multimask(self, multimask: bool) -> None:
        if not multimask or self.model.config.multimask_output:
            return
        if self.onnx is not None:
            raise ValueError(
                "multimask=True needs the PyTorch model or a model trained with multimask_output: the "
                f"{self.backend} model was exported with one mask; use dtype='fp32' / 'auto' for SAM's three masks"
            )
        if not self._warned_multimask:
            self._warned_multimask = True
            logger.warning(
                "multimask=True on a model trained with one mask (config.multimask_output false): SAM's three "
                "mask tokens were not trained with it, their masks and scores are what the starting weights give"
            )

    def _prepare_bgr(self, job: Job) -> Prepared:
        return self._prepare(job, bgr=True)

    def _prepare(self, job: Job, *, bgr: bool = False) -> Prepared:
        image = bgr_to_rgb(job.image) if bgr and isinstance(job.image, np.ndarray) else job.image
        rgb = self.read_image(image, what=job.what)
        out = self.transform(rgb, sentence=job.sentence or "")
        return Prepared(canvas=out.image, meta=out.meta)

    def _run(
        self, chunk: list[Job], prepared: dict[Hashable, Prepared], threshold: float, *, multimask: bool = False
    ) -> list[SegmentationResult]:
        import torch

        from ditsam.data.transforms import restore_to_original
        from ditsam.model.prediction import choose_prediction, final_mask

        device = self.device
        keys = [job.image_key for job in chunk]
        if len(set(keys)) == 1:  # one image, several sentences: one canvas, broadcast over the batch
            images = prepared[keys[0]].canvas.to(device)[None].expand(len(chunk), -1, -1, -1)
        else:
            images = torch.stack([prepared[key].canvas for key in keys]).to(device)
        metas = [prepared[key].meta for key in keys]
        kwargs: dict[str, Any] = {}
        if chunk[0].points is not None:
            coords = np.stack([meta.to_canvas(job.points[0]) for job, meta in zip(chunk, metas)])
            labels = np.stack([job.points[1] for job in chunk])
            kwargs["points"] = (
                torch.as_tensor(coords, dtype=torch.float32, device=device),
                torch.as_tensor(labels, dtype=torch.float32, device=device),
            )
        if chunk[0].box is not None:
            canvas_boxes = np.stack([meta.box_to_canvas(job.box) for job, meta in zip(chunk, metas)])
            kwargs["boxes"] = torch.as_tensor(canvas_boxes, dtype=torch.float32, device=device)
        text = None if chunk[0].sentence is None else self.model.tokenize([job.sentence for job in chunk])
        if text is None and self.onnx is not None:
            raise ValueError(
                f"the {self.backend} model is exported for text prompts: prompt it with text, or build the Segmenter "
                "with dtype='fp32' / 'bf16' for points / boxes alone"
            )
        with torch.inference_mode(), self._autocast():
            if self.onnx is not None:
                output = self.onnx(images, text, **kwargs)
            else:
                if multimask:
                    kwargs["multimask_output"] = True
                output = self.model(images, text=text, **kwargs)
        chosen = choose_prediction(output)
        results = []
        for row, (job, meta) in enumerate(zip(chunk, metas)):
            restored = restore_to_original(chosen.logits[row], meta)
            no_target = None if chosen.no_target is None else bool(chosen.no_target[row])
            mask, present = final_mask(restored, threshold=threshold, no_target=no_target)
            masks = [mask]
            if output.logits.shape[1] > 1:  # every mask at the original size, thresholded the same way
                masks = [
                    final_mask(restore_to_original(logits, meta), threshold=threshold, no_target=no_target)[0]
                    for logits in output.logits[row].float()
                ]
            results.append(
                SegmentationResult(
                    mask=mask.cpu().numpy(),
                    score=float(chosen.score[row]),
                    logits=restored.cpu().numpy().astype(np.float32, copy=False),
                    present=present,
                    presence=None if chosen.presence is None else float(chosen.presence[row]),
                    masks=torch.stack(masks).cpu().numpy(),
                    scores=output.iou_predictions[row].float().cpu().numpy(),
                    mask_index=int(chosen.mask_index[row]),
                    sentence=job.sentence,
                    image=os.path.abspath(job.image) if isinstance(job.image, (str, os.PathLike)) else None,
                )
            )
        return results
