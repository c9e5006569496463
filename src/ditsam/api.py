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
import dataclasses
import logging
import os
from typing import TYPE_CHECKING, Any, Hashable, Iterator, Sequence

import numpy as np

from ditsam.data.images import DEFAULT_MAX_PIXELS, ImageInput, read_image
from ditsam.defaults import MASK_THRESHOLD

if TYPE_CHECKING:  # heavy imports stay out of `import ditsam.api`
    import torch
    from PIL import Image

    from ditsam.data.transforms import TransformMeta
    from ditsam.model.config import DITSamConfig
    from ditsam.model.dit import DITSam

logger = logging.getLogger(__name__)

#: ``(coords, labels)``: coords (N, 2) as (x, y) pixels, labels (N,) with 1 = foreground, 0 = background.
PointsInput = tuple[Any, Any]
#: ``(x1, y1, x2, y2)`` pixels: left, top, right, bottom edges.
BoxInput = Any

DEFAULT_THRESHOLD = MASK_THRESHOLD
_DTYPE_NAMES = {
    "fp32": "float32", "float32": "float32", "float": "float32",
    "bf16": "bfloat16", "bfloat16": "bfloat16",
    "fp16": "float16", "float16": "float16", "half": "float16",
}


@dataclasses.dataclass
class SegmentationResult:
    """One prediction at the original image resolution.

    mask: bool (H, W); score: the model's predicted IoU of that mask (float); logits: float32 (H, W),
    ``sigmoid(logits) > threshold`` gives ``mask`` when something is referred. present: False when a
    model with a no-target head (generalized RIS, ``config.no_target_head``) says the sentence names
    nothing in the image; ``mask`` is then empty (``logits`` stay the decoder's, for inspection).
    presence: that head's probability that something is referred (None: the model has no such head).
    A sentence naming several objects gives one mask covering all of them.
    """

    mask: np.ndarray
    score: float
    logits: np.ndarray
    present: bool = True
    presence: float | None = None

    @property
    def area(self) -> int:
        """Foreground pixels of :attr:`mask`."""
        return int(self.mask.sum())

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """COCO box (x, y, w, h) around :attr:`mask`; (0, 0, 0, 0) for an empty mask."""
        ys = np.flatnonzero(self.mask.any(axis=1))
        xs = np.flatnonzero(self.mask.any(axis=0))
        if len(xs) == 0:
            return (0, 0, 0, 0)
        return (int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1))


# ---------------------------------------------------------------------------------------------------
# Coordinates (the mapping itself is TransformMeta's; these names stay for callers of ditsam.api)
# ---------------------------------------------------------------------------------------------------
def original_to_canvas(xy: np.ndarray, meta: "TransformMeta") -> np.ndarray:
    """(..., 2) points from original pixels to the canvas: :meth:`TransformMeta.to_canvas`."""
    return meta.to_canvas(xy)


def box_to_canvas(box: np.ndarray, meta: "TransformMeta") -> np.ndarray:
    """(..., 4) boxes from original pixels to the canvas: :meth:`TransformMeta.box_to_canvas`."""
    return meta.box_to_canvas(box)


# ---------------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------------
def _parse_points(points: Any, what: str) -> tuple[np.ndarray, np.ndarray] | None:
    if points is None:
        return None
    if not isinstance(points, (tuple, list)) or len(points) != 2:
        raise ValueError(f"{what}: points must be a pair (coords (N, 2), labels (N,)), got {type(points).__name__}")
    coords = np.asarray(_to_numpy(points[0]), dtype=np.float64)
    labels = np.asarray(_to_numpy(points[1]))
    if coords.ndim == 1 and coords.shape == (2,):
        coords = coords[None]
    if labels.ndim == 0:
        labels = labels[None]
    if coords.ndim != 2 or coords.shape[1] != 2 or coords.shape[0] == 0:
        raise ValueError(f"{what}: point coords must be (N, 2) x, y with N >= 1, got shape {coords.shape}")
    if labels.shape != (coords.shape[0],):
        raise ValueError(f"{what}: point labels must be ({coords.shape[0]},), got shape {labels.shape}")
    if not np.isfinite(coords).all():
        raise ValueError(f"{what}: point coords must be finite, got {coords.tolist()}")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"{what}: point labels must be 1 (foreground) or 0 (background), got {labels.tolist()}")
    return coords, labels.astype(np.float32)


def _parse_box(box: Any, what: str) -> np.ndarray | None:
    if box is None:
        return None
    try:
        values = np.asarray(_to_numpy(box), dtype=np.float64)
    except (TypeError, ValueError):
        values = np.zeros(0)
    if values.size != 4:
        raise ValueError(f"{what}: a box must be 4 numbers x1, y1, x2, y2, got {box!r}")
    values = values.reshape(4)
    if not np.isfinite(values).all():
        raise ValueError(f"{what}: box values must be finite, got {values.tolist()}")
    if values[2] < values[0] or values[3] < values[1]:
        raise ValueError(f"{what}: box {values.tolist()} has x2 < x1 or y2 < y1 (expected x1, y1, x2, y2)")
    return values


def _to_numpy(value: Any) -> Any:
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
        return value.detach().cpu().numpy()
    return value


def _check_inside(job: "_Job", width: int, height: int) -> None:
    if job.points is not None:
        coords = job.points[0]
        outside = (coords[:, 0] < 0) | (coords[:, 0] > width) | (coords[:, 1] < 0) | (coords[:, 1] > height)
        if outside.any():
            raise ValueError(
                f"{job.what}: point {coords[outside][0].tolist()} lies outside the {width}x{height} image "
                f"(points are x, y in original image pixels)"
            )
    if job.box is not None:
        x1, y1, x2, y2 = job.box.tolist()
        if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
            raise ValueError(
                f"{job.what}: box {job.box.tolist()} reaches outside the {width}x{height} image "
                f"(boxes are x1, y1, x2, y2 in original image pixels, within 0..W and 0..H)"
            )


# ---------------------------------------------------------------------------------------------------
# Segmenter
# ---------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Job:
    index: int
    image_key: Hashable
    image: Any
    sentence: str
    points: tuple[np.ndarray, np.ndarray] | None
    box: np.ndarray | None
    what: str

    @property
    def signature(self) -> tuple[int, bool]:
        """Jobs batched together must have the same prompt layout."""
        return (0 if self.points is None else len(self.points[1]), self.box is not None)


@dataclasses.dataclass
class _Prepared:
    canvas: "torch.Tensor"  # (3, S, S) float32, normalised
    meta: "TransformMeta"


def _image_key(image: Any) -> Hashable:
    if isinstance(image, (str, os.PathLike)):
        return ("path", os.fspath(image))
    return ("object", id(image))


def _is_int8(dtype: object) -> bool:
    return isinstance(dtype, str) and dtype.lower() == "int8"


def _int8_device(device: "torch.device | str | None") -> str:
    """The device of int8 inference: the CPU (ONNX Runtime); any other explicit device is an error."""
    if device is not None and str(device).split(":")[0] != "cpu":
        raise ValueError(f"dtype='int8' runs on the CPU (ONNX Runtime), not on {str(device)!r}: pass device='cpu'")
    return "cpu"


def resolve_device(device: "torch.device | str | None") -> "torch.device":
    """None -> ``cuda`` when available, else ``cpu``; anything else as ``torch.device`` takes it, checked
    to be usable here. Raises ValueError in one sentence for an unknown device name, or for a CUDA device
    on a machine or torch build without one (torch itself would fail later, deep in ``.to()``)."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}: expected cpu, cuda, cuda:N or mps") from None
    if resolved.type == "cuda":
        if torch.version.cuda is None:
            raise ValueError(
                f"device {str(device)!r} asked for, but this torch build ({torch.__version__}) has no CUDA support; "
                f"use --device cpu (device='cpu'), or install the torch build for your CUDA"
            )
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} asked for, but no CUDA GPU is visible; use --device cpu (device='cpu')")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {str(device)!r} asked for, but only {torch.cuda.device_count()} CUDA GPU(s) are visible "
                f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})"
            )
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(device)!r} asked for, but MPS is not available here; use --device cpu (device='cpu')")
    return resolved


def resolve_dtype(dtype: "torch.dtype | str | None") -> "torch.dtype | None":
    """None / float32 -> None (no autocast); bfloat16 / float16 (or "bf16", "fp16", ...) -> that dtype."""
    import torch

    if dtype is None:
        return None
    if isinstance(dtype, str):
        name = _DTYPE_NAMES.get(dtype.lower().removeprefix("torch."))
        if name is None:
            raise ValueError(f"unknown dtype {dtype!r}: use fp32, bf16 or fp16")
        dtype = getattr(torch, name)
    if dtype == torch.float32:
        return None
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype}")
    return dtype


class Segmenter:
    """Text-prompted segmentation with a :class:`~ditsam.model.dit.DITSam` (see the module docstring).

    Build with :meth:`from_pretrained`, or wrap a model: ``Segmenter(model, device=..., dtype=...)``.

    Args (keyword-only besides ``model``):
        device: where the model runs; default ``cuda`` when available, else ``cpu``.
        dtype: ``None`` / ``torch.float32`` (full precision) or ``torch.bfloat16`` (autocast on CPU
            and GPU; weights stay float32); ``torch.float16`` (autocast, GPU) also works. ``"int8"``:
            the CPU only, text prompts only: the model is exported and quantised to int8 with ONNX
            Runtime when the segmenter is built (~1 minute for ViT-B; see :mod:`ditsam.int8`; needs
            ``pip install ditsam[int8]``).
        threshold: a pixel is foreground where ``sigmoid(logit) > threshold`` (paper / reference: 0.35).
        max_pixels: images with more pixels are refused with a clear error before they are decoded
            (``None``: no limit besides PIL's own, about 179 megapixels).
        batch_size: sentences (image-sentence pairs) per forward pass.
    """

    def __init__(
        self,
        model: "DITSam",
        *,
        device: "torch.device | str | None" = None,
        dtype: "torch.dtype | str | None" = None,
        threshold: float = DEFAULT_THRESHOLD,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        batch_size: int = 8,
    ) -> None:
        from ditsam.data.transforms import RISTransform, TransformConfig

        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must lie strictly between 0 and 1, got {threshold}")
        if max_pixels is not None and max_pixels < 1:
            raise ValueError(f"max_pixels must be positive or None, got {max_pixels}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        int8 = _is_int8(dtype)
        self.device = resolve_device(_int8_device(device) if int8 else device)
        self.dtype = None if int8 else resolve_dtype(dtype)
        self.threshold = float(threshold)
        self.max_pixels = max_pixels
        self.batch_size = int(batch_size)
        self.model = model.to(self.device).eval()
        self.transform = RISTransform.for_eval(TransformConfig(input_size=model.config.image_size))
        self.onnx = None  # an OnnxRunner used instead of the PyTorch model (dtype="int8")
        if int8:
            from ditsam.int8 import OnnxRunner

            self.onnx = OnnxRunner.int8(self.model)

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
        device: "torch.device | str | None" = None,
        dtype: "torch.dtype | str | None" = None,
        threshold: float = DEFAULT_THRESHOLD,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        batch_size: int = 8,
    ) -> "Segmenter":
        """A segmenter for a model from any source (:meth:`DITSam.from_pretrained
        <ditsam.model.dit.DITSam.from_pretrained>`):

        - a folder written by ``DITSam.save_pretrained`` (e.g. a training run's ``checkpoints/best``);
        - a Hugging Face Hub id ``owner/name`` (``revision=`` a branch, tag or commit), from the Hub cache,
          downloaded when missing unless ``HF_HUB_OFFLINE=1``; ``owner/name/file.pth`` takes one file of it;
        - the authors' released DIT ``.pth`` with no config: the architecture is read from the weights,
          L-DIT unless ``injection="e2e"`` (or ``"none"``), BERT's config and tokenizer from
          ``text_name_or_path`` (default ``bert-base-uncased``, through the Hub cache);
        - any other checkpoint file holding every weight (a flat DITSam state dict), with ``config=``.

        An official SAM checkpoint is refused: it holds no text model. Errors name the source: a missing
        folder or file, an unresolvable Hub id (FileNotFoundError), damaged weights or keys that do not
        match (:class:`~ditsam.model.weights.CheckpointError`).
        """
        from ditsam.model.dit import DITSam

        resolve_device(_int8_device(device) if _is_int8(dtype) else device)  # an unusable device fails before loading
        model = DITSam.from_pretrained(
            source, revision=revision, injection=injection, config=config,  # type: ignore[arg-type]
            text_name_or_path=text_name_or_path, cache_dir=cache_dir,
        )
        return cls(model, device=device, dtype=dtype, threshold=threshold, max_pixels=max_pixels, batch_size=batch_size)

    def __repr__(self) -> str:
        config = self.model.config
        return (
            f"Segmenter(injection={config.injection!r}, image_size={config.image_size}, device={str(self.device)!r}, "
            f"dtype={'int8' if self.onnx is not None else self.dtype}, threshold={self.threshold}, max_pixels={self.max_pixels})"
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
        text: str | Sequence[str],
        *,
        points: PointsInput | Sequence[PointsInput | None] | None = None,
        boxes: BoxInput | Sequence[BoxInput | None] | None = None,
        threshold: float | None = None,
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
        model trained with point / box prompts ("Mix") uses them meaningfully.

        ``threshold`` overrides the segmenter's for this call; ``progress`` shows a tqdm bar.
        Raises ValueError for an empty sentence or mismatched lengths, DataError naming the path for
        unreadable files or images over ``max_pixels``. Sentences longer than the model's token limit
        are truncated, with one warning.
        """
        threshold = self.threshold if threshold is None else float(threshold)
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must lie strictly between 0 and 1, got {threshold}")
        jobs, single = self._jobs(image, text, points, boxes)
        results: list[SegmentationResult | None] = [None] * len(jobs)
        for chunk, prepared in self._chunks(jobs, progress=progress):
            for job, result in zip(chunk, self._run(chunk, prepared, threshold)):
                results[job.index] = result
        out = [r for r in results if r is not None]
        assert len(out) == len(jobs)
        return out[0] if single else out

    def _jobs(
        self, image: Any, text: Any, points: Any, boxes: Any
    ) -> tuple[list[_Job], bool]:
        """Validate the inputs (types, sentences, prompt shapes) and pair them up, before any work."""
        many_images = isinstance(image, (list, tuple))
        if isinstance(text, str):
            sentences, many_sentences = [text], False
        elif isinstance(text, (list, tuple)):
            sentences, many_sentences = list(text), True
        else:
            raise TypeError(f"text must be a sentence (str) or a list of sentences, got {type(text).__name__}")
        if many_sentences and not sentences:
            raise ValueError("text is an empty list: give at least one sentence")
        for index, sentence in enumerate(sentences):
            if not isinstance(sentence, str):
                raise TypeError(f"sentence {index} must be a str, got {type(sentence).__name__}")
            if not sentence.strip():
                raise ValueError(f"sentence {index} is empty ({sentence!r}): every prediction needs a description")
        if many_images:
            images = list(image)
            if not images:
                raise ValueError("image is an empty list: give at least one image")
            if many_sentences and len(sentences) != len(images):
                raise ValueError(
                    f"{len(images)} images but {len(sentences)} sentences: give one sentence for all images, "
                    f"or one per image"
                )
            if not many_sentences:
                sentences = sentences * len(images)
            point_list = self._per_pair(points, len(images), "points")
            box_list = self._per_pair(boxes, len(images), "boxes")
        else:
            images = [image] * len(sentences)
            point_list = [points] * len(sentences)
            box_list = [boxes] * len(sentences)
        jobs = []
        for index, (img, sentence, pts, box) in enumerate(zip(images, sentences, point_list, box_list)):
            what = f"image {index}" if many_images else "image"
            if isinstance(img, (str, os.PathLike)):
                what = os.fspath(img)
            jobs.append(
                _Job(
                    index=index, image_key=_image_key(img), image=img, sentence=sentence,
                    points=_parse_points(pts, what), box=_parse_box(box, what), what=what,
                )
            )
        return jobs, not many_images and not many_sentences

    @staticmethod
    def _per_pair(value: Any, count: int, name: str) -> list[Any]:
        if value is None:
            return [None] * count
        if isinstance(value, np.ndarray) and name == "boxes" and value.shape == (count, 4):
            return list(value)
        if not isinstance(value, (list, tuple)) or len(value) != count:
            raise ValueError(
                f"with a list of {count} images, {name} must be a list of {count} entries (None or one "
                f"prompt per image), got {type(value).__name__}"
                + (f" of length {len(value)}" if isinstance(value, (list, tuple)) else "")
            )
        return list(value)

    def _prepare(self, job: _Job) -> _Prepared:
        rgb = self.read_image(job.image, what=job.what)
        out = self.transform(rgb, sentence=job.sentence)
        return _Prepared(canvas=out.image, meta=out.meta)

    def _chunks(self, jobs: list[_Job], *, progress: bool) -> Iterator[tuple[list[_Job], dict[Hashable, _Prepared]]]:
        """Batches of jobs with one prompt layout, and their preprocessed images. Each distinct image
        is prepared once per batch; the previous batch's images are reused, then released."""
        from tqdm.auto import tqdm

        ordered = sorted(jobs, key=lambda job: (job.signature, job.index))
        cache: dict[Hashable, _Prepared] = {}
        bar = tqdm(total=len(jobs), desc="predict", unit="sentence", disable=not progress, leave=False)
        try:
            start = 0
            while start < len(ordered):
                stop = start + 1
                while (
                    stop < len(ordered) and stop - start < self.batch_size
                    and ordered[stop].signature == ordered[start].signature
                ):
                    stop += 1
                chunk = ordered[start:stop]
                prepared: dict[Hashable, _Prepared] = {}
                for job in chunk:
                    if job.image_key not in prepared:
                        prepared[job.image_key] = cache.get(job.image_key) or self._prepare(job)
                    meta = prepared[job.image_key].meta
                    _check_inside(job, meta.orig_w, meta.orig_h)
                cache = prepared
                yield chunk, prepared
                bar.update(len(chunk))
                start = stop
        finally:
            bar.close()

    def _run(self, chunk: list[_Job], prepared: dict[Hashable, _Prepared], threshold: float) -> list[SegmentationResult]:
        import torch

        from ditsam.data.transforms import restore_to_original
        from ditsam.model.presence import PRESENCE_THRESHOLD

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
        text = self.model.tokenize([job.sentence for job in chunk])
        with torch.inference_mode(), self._autocast():
            output = self.model(images, text=text, **kwargs) if self.onnx is None else self.onnx(images, text, **kwargs)
        logits = output.logits.float()
        iou = output.iou_predictions.float()
        # Multimask models: SAM's convention, the mask with the highest predicted IoU.
        best = iou.argmax(dim=1)
        rows = torch.arange(len(chunk), device=logits.device)
        logits, iou = logits[rows, best], iou[rows, best]
        presence = None if output.presence_logits is None else torch.sigmoid(output.presence_logits.float()).tolist()
        results = []
        for row, meta in enumerate(metas):
            restored = restore_to_original(logits[row], meta)
            present = presence is None or presence[row] >= PRESENCE_THRESHOLD
            mask = (torch.sigmoid(restored) > threshold) if present else torch.zeros_like(restored, dtype=torch.bool)
            results.append(
                SegmentationResult(
                    mask=mask.cpu().numpy(), score=float(iou[row]),
                    logits=restored.cpu().numpy().astype(np.float32, copy=False), present=present,
                    presence=None if presence is None else float(presence[row]),
                )
            )
        return results
