"""What :meth:`ditsam.api.Segmenter.predict` returns: one mask at the image's own size, and its serialisations.

Boxes, one convention in and out: ``boxes=`` of :meth:`~ditsam.api.Segmenter.predict` and
:attr:`SegmentationResult.bbox_xyxy` are ``(x0, y0, x1, y1)`` in continuous original-image pixels (pixel
column i spans [i, i + 1)), so a result's box goes back in as a prompt unchanged;
:attr:`SegmentationResult.bbox` (= :attr:`~SegmentationResult.bbox_xywh`) is COCO's ``(x, y, w, h)`` of the
same box, which the record of :meth:`~SegmentationResult.to_dict` (``docs/record.md``) holds as ``bbox``.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

#: Decimals of the scores written into records (the IoU head's precision is far coarser).
SCORE_DECIMALS = 6
#: Pixel values of :meth:`SegmentationResult.mask_image`: background, foreground.
MASK_IMAGE_OFF, MASK_IMAGE_ON = 0, 255


@dataclasses.dataclass
class SegmentationResult:
    """One prediction at the original image resolution.

    mask: bool (H, W); score: the model's predicted IoU of that mask (float); logits: float32 (H, W),
    ``sigmoid(logits) > threshold`` gives ``mask`` when something is referred. present: False when the
    sentence names nothing in the image: a model with a no-target head (generalized RIS,
    ``config.no_target_head``) says so, and ``mask`` is then empty (``logits`` stay the decoder's, for
    inspection); for a model without the head, an empty mask is its "nothing" (as GRES scoring reads it).
    presence: that head's probability that something is referred (None: the model has no such head).
    A sentence naming several objects gives one mask covering all of them.

    masks: bool (M, H, W), every mask the decoder gave (M = 3 with ``predict(..., multimask=True)`` or a
    ``multimask_output`` model; M = 1 otherwise), and scores: float32 (M,), their predicted IoUs; ``mask`` is
    ``masks[mask_index]``, the one with the highest score (None when the result was built without them).
    sentence / image: the sentence and, for an image given as a path, its absolute path (None otherwise):
    what :meth:`to_dict` writes beside the prediction.
    """

    mask: np.ndarray
    score: float
    logits: np.ndarray
    present: bool = True
    presence: float | None = None
    masks: np.ndarray | None = None
    scores: np.ndarray | None = None
    mask_index: int = 0
    sentence: str | None = None
    image: str | None = None

    @property
    def area(self) -> int:
        """Foreground pixels of :attr:`mask`."""
        return int(self.mask.sum())

    @property
    def bbox_xywh(self) -> tuple[int, int, int, int]:
        """COCO box (x, y, w, h) around :attr:`mask`; (0, 0, 0, 0) for an empty mask."""
        ys = np.flatnonzero(self.mask.any(axis=1))
        xs = np.flatnonzero(self.mask.any(axis=0))
        if len(xs) == 0:
            return (0, 0, 0, 0)
        return (int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1))

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """COCO box (x, y, w, h) around :attr:`mask` (the record's ``bbox``): :attr:`bbox_xywh`."""
        return self.bbox_xywh

    @property
    def bbox_xyxy(self) -> tuple[int, int, int, int]:
        """The box around :attr:`mask` as ``(x0, y0, x1, y1)``, the convention of ``predict(boxes=...)``:
        continuous pixel edges, so x1 = x + w (one past the last column); (0, 0, 0, 0) for an empty mask."""
        x, y, w, h = self.bbox_xywh
        return (x, y, x + w, y + h)

    def to_rle(self) -> dict[str, Any]:
        """:attr:`mask` as COCO RLE, ``{"size": [H, W], "counts": str}`` (``pycocotools.mask.decode`` reads it
        back; an empty mask is valid RLE too)."""
        from ditsam.data.segmentation import encode_rle

        return encode_rle(self.mask)

    def to_dict(self, **fields: Any) -> dict[str, Any]:
        """The prediction as a record of ``docs/record.schema.json`` (the lines of ``ditsam predict``'s
        ``predictions.json``, which ``data.format=custom`` trains on): ``sentence`` and ``image`` when known,
        ``score``, ``segmentation`` (COCO RLE), ``bbox`` (COCO x, y, w, h), ``area``, ``present``, ``presence``
        (with a no-target head) and, with several masks, ``masks``: ``[{"segmentation", "score"}, ...]``.
        ``fields`` (``id=``, ``image=``, ``split=``, ...) are added, replacing what the result knows."""
        record: dict[str, Any] = {}
        if self.image is not None:
            record["image"] = self.image
        if self.sentence is not None:
            record["sentence"] = self.sentence
        record.update(
            score=round(float(self.score), SCORE_DECIMALS),
            segmentation=self.to_rle(),
            bbox=list(self.bbox_xywh),
            area=self.area,
            present=bool(self.present),
        )
        if self.presence is not None:
            record["presence"] = round(float(self.presence), SCORE_DECIMALS)
        if self.masks is not None and self.scores is not None and len(self.masks) > 1:
            from ditsam.data.segmentation import encode_rle

            record["masks"] = [
                {"segmentation": encode_rle(mask), "score": round(float(score), SCORE_DECIMALS)}
                for mask, score in zip(self.masks, self.scores)
            ]
        record.update(fields)
        return record

    def mask_image(self) -> "Image.Image":
        """:attr:`mask` as a PIL image of the original size, mode ``L``: 255 on the object, 0 elsewhere (the
        PNG ``ditsam predict`` writes into ``masks/``)."""
        from PIL import Image

        values = np.where(self.mask, MASK_IMAGE_ON, MASK_IMAGE_OFF).astype(np.uint8)
        return Image.fromarray(values)  # 2-D uint8: mode L
