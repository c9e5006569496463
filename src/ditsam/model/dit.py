"""DITSam: SAM with deep instruction tuning — BERT tokens inside the ViT, SAM's decoder on top."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ditsam.model.config import DITSamConfig, Injection
from ditsam.model.family import build_mask_decoder, build_prompt_encoder
from ditsam.model.inject import build_injection
from ditsam.model.presence import PresenceHead
from ditsam.model.sam.image_encoder import ImageEncoderViT
from ditsam.model.text import TextEncoder, TextTokenizer, TokenizedText


@dataclasses.dataclass
class DITSamOutput:
    """logits: (B, M, S, S) at input resolution; low_res_logits: (B, M, S/4, S/4);
    iou_predictions: (B, M). M = 1, or 3 with multimask output. presence_logits: (B,), > 0 where
    the sentence refers to something (only with ``config.no_target_head``, else None)."""

    logits: torch.Tensor
    low_res_logits: torch.Tensor
    iou_predictions: torch.Tensor
    presence_logits: torch.Tensor | None = None


class DITSam(nn.Module):
    """Text- (and point/box-) prompted SAM (or EfficientSAM: ``config.backbone`` ``efficientsam_ti`` / ``_s``).

    forward(images (B,3,S,S), text=TokenizedText | list[str], points=(coords (B,N,2), labels (B,N)),
    boxes (B,4)) -> :class:`DITSamOutput`. Images are normalised and padded to S = config.image_size
    (see :mod:`ditsam.data.transforms`); point and box coordinates are pixels of that canvas.
    """

    def __init__(self, config: DITSamConfig, *, load_text_weights: bool = True) -> None:
        super().__init__()
        self.config = config
        size = config.size
        self.text_encoder = TextEncoder(config=config.text, load_weights=load_text_weights)
        text_dim = self.text_encoder.hidden_size
        self.image_encoder = ImageEncoderViT(
            img_size=config.image_size,
            patch_size=config.patch_size,
            embed_dim=size.embed_dim,
            depth=size.depth,
            num_heads=size.num_heads,
            mlp_ratio=config.mlp_ratio,
            out_chans=config.prompt_embed_dim,
            window_size=config.window_size if config.attention == "windowed" else 0,
            global_attn_indexes=size.global_attn_indexes,
            injection=build_injection(config, text_dim=text_dim),
            pos_embed_init=config.pos_embed_init,
            use_rel_pos=config.rel_pos,
        )
        self.image_encoder.gradient_checkpointing = config.gradient_checkpointing
        # SAM's or EfficientSAM's prompt encoder and mask decoder (ditsam.model.family).
        self.prompt_encoder = build_prompt_encoder(config)
        self.mask_decoder = build_mask_decoder(config)
        # W_o: the words as sparse prompts of the decoder (applied to BERT's features, as the reference).
        self.text_proj = nn.Linear(text_dim, config.prompt_embed_dim)
        self.presence_head = (
            PresenceHead(embed_dim=config.prompt_embed_dim, hidden_dim=config.prompt_embed_dim)
            if config.no_target_head
            else nn.Identity()
        )
        self._tokenizer: TextTokenizer | None = None
        self.apply_freezing()

    # -- parameters ---------------------------------------------------------------------------
    def apply_freezing(self, *, head_only: bool = False) -> None:
        """Set requires_grad from the config: frozen ViT keeps its injection trainable.

        ``head_only`` (fine-tuning modes ``frozen`` / ``lora``, see :mod:`ditsam.engine.finetune`)
        also freezes the ViT, BERT and the prompt encoder, whatever the config says: only the
        injection, the mask decoder and W_o (``text_proj``) train.
        """
        self.text_encoder.bert.requires_grad_(self.config.text.trainable and not head_only)
        self.image_encoder.requires_grad_(not (self.config.freeze_image_encoder or head_only))
        self.image_encoder.injection.requires_grad_(True)
        self.prompt_encoder.requires_grad_(not head_only)
        self.mask_decoder.requires_grad_(True)
        self.text_proj.requires_grad_(True)
        self.presence_head.requires_grad_(True)

    def trainable_parameter_names(self) -> list[str]:
        return [name for name, p in self.named_parameters() if p.requires_grad]

    # -- text ---------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> TextTokenizer:
        if self._tokenizer is None:
            text = self.config.text
            self._tokenizer = TextTokenizer(
                name_or_path=text.name_or_path, max_tokens=text.max_tokens, local_files_only=text.local_files_only
            )
        return self._tokenizer

    def tokenize(self, sentences: str | Sequence[str]) -> TokenizedText:
        """Token ids and mask (B, T) on the model's device; with ``mask_text_padding`` the all-[PAD] columns
        are dropped first, on the CPU (see :meth:`TokenizedText.without_padding_columns`)."""
        tokens = self.tokenizer(sentences)
        if self.config.mask_text_padding:
            tokens = tokens.without_padding_columns()
        return tokens.to(self.text_proj.weight.device)

    # -- forward ------------------------------------------------------------------------------
    def forward(
        self,
        images: torch.Tensor,
        text: TokenizedText | str | Sequence[str] | None = None,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
        multimask_output: bool | None = None,
    ) -> DITSamOutput:
        """``multimask_output``: True returns SAM's three masks (M = 3), False the single one (M = 1); None
        (the default) does what ``config.multimask_output`` says (what the model was trained with)."""
        self._check_inputs(images, text, points, boxes)
        if multimask_output is None:
            multimask_output = self.config.multimask_output
        batch = images.shape[0]
        if text is not None and not isinstance(text, TokenizedText):
            text = self.tokenize(text)
        if text is None:
            features = images.new_zeros(batch, 0, self.text_encoder.hidden_size)
            keep = torch.ones(batch, 0, dtype=torch.bool, device=images.device)
        else:
            if (
                self.config.mask_text_padding
                and not torch.jit.is_tracing()
                and text.attention_mask.device.type == "cpu"
            ):
                # Columns that are [PAD] in every sentence change nothing once padding is masked
                # (BERT masks it too): drop them before BERT, the ViT and the decoder see them. Not
                # while tracing (ONNX export), where the cut would be frozen into the graph, and not on
                # an accelerator, where reading the mask would stall the device (tokenize() and the
                # training collator trim on the CPU before the tokens move).
                text = text.without_padding_columns()
            input_ids, keep = text.input_ids, text.attention_mask.bool()
            features = self.text_encoder(input_ids, keep)
        if not self.config.mask_text_padding:
            keep = torch.ones_like(keep)

        image_embeddings = self.image_encoder(images, features, keep)
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=None, batch_size=batch)
        sparse = torch.cat([self.text_proj(features).to(sparse.dtype), sparse], dim=1)
        token_keep = torch.cat([keep, keep.new_ones(batch, sparse.shape[1] - keep.shape[1])], dim=1)
        low_res, iou, iou_token = self.mask_decoder(
            image_embeddings=image_embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
            token_key_mask=token_keep,
            with_iou_token=True,
        )
        logits = F.interpolate(
            low_res, size=images.shape[-2:], mode="bilinear", align_corners=self.config.upsample_align_corners
        )
        presence = self.presence_head(iou_token).float() if self.config.no_target_head else None
        return DITSamOutput(logits=logits, low_res_logits=low_res, iou_predictions=iou, presence_logits=presence)

    def _check_inputs(self, images, text, points, boxes) -> None:
        """Shapes and counts; values (points on the canvas, x1 <= x2) only for tensors on the CPU, where
        reading them costs no device-to-host sync (a training step on a GPU never waits for them)."""
        size = self.config.image_size
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be a (B, 3, {size}, {size}) tensor, got {shape}")
        if tuple(images.shape[-2:]) != (size, size):
            raise ValueError(
                f"images must be {size}x{size} (the model's image_size; resize and pad with "
                f"ditsam.data.transforms), got {tuple(images.shape[-2:])}"
            )
        batch = images.shape[0]
        if text is None and points is None and boxes is None:
            raise ValueError("no prompt given: pass text, points or boxes")
        if isinstance(text, TokenizedText) and text.input_ids.shape[0] != batch:
            raise ValueError(f"text has {text.input_ids.shape[0]} sentences for {batch} images")
        if text is not None and not isinstance(text, (TokenizedText, str)) and len(text) != batch:
            raise ValueError(f"text has {len(text)} sentences for {batch} images")
        if isinstance(text, str) and batch != 1:
            raise ValueError(f"one sentence given for {batch} images: pass a list of {batch} sentences")
        if points is not None:
            coords, labels = points
            if (
                coords.ndim != 3
                or coords.shape[0] != batch
                or coords.shape[-1] != 2
                or labels.shape != coords.shape[:2]
            ):
                raise ValueError(
                    f"points must be (coords (B,N,2), labels (B,N)) with B={batch}, "
                    f"got {tuple(coords.shape)} and {tuple(labels.shape)}"
                )
            if coords.device.type == "cpu":
                outside = (labels >= 0) & ((coords < 0) | (coords > size)).any(-1)
                if outside.any():
                    first = coords[outside][0].tolist()
                    raise ValueError(f"point {first} lies outside the {size}x{size} input canvas")
        if boxes is not None:
            if boxes.ndim != 2 or boxes.shape != (batch, 4):
                raise ValueError(f"boxes must be ({batch}, 4) as x1, y1, x2, y2, got {tuple(boxes.shape)}")
            if boxes.device.type == "cpu":
                bad = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
                if bad.any():
                    raise ValueError(f"box {boxes[bad][0].tolist()} has x2 < x1 or y2 < y1 (expected x1, y1, x2, y2)")

    # -- persistence ----------------------------------------------------------------------------
    def save_pretrained(
        self,
        directory: str | Path,
        *,
        metrics: Mapping[str, Mapping[str, object]] | None = None,
        training_data: str | Sequence[str] | None = None,
        base_model: str | None = None,
        model_id: str | None = None,
        card_notes: Sequence[str] = (),
    ) -> Path:
        """Write config.json, model.safetensors, the text tokenizer/config and a model card (README.md)
        to ``directory``.

        The card (:func:`ditsam.model.checkpoints.card.build_model_card`) describes the architecture and, when given,
        ``metrics`` (split -> {metric: value}), ``training_data`` (dataset names or a description) and
        ``base_model`` (where the weights came from); ``model_id`` is the name its loading examples use
        (a Hub id; default a placeholder path), ``card_notes`` extra lines.
        """
        from ditsam.model.checkpoints import save_pretrained

        return save_pretrained(
            self,
            directory,
            metrics=metrics,
            training_data=training_data,
            base_model=base_model,
            model_id=model_id,
            card_notes=card_notes,
        )

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool | None = None,
        token: str | None = None,
        revision: str | None = None,
        commit_message: str = "Upload DIT-SAM model",
        create_pr: bool = False,
        metrics: Mapping[str, Mapping[str, object]] | None = None,
        training_data: str | Sequence[str] | None = None,
        base_model: str | None = None,
    ) -> str:
        """Upload the model to the Hugging Face Hub repo ``repo_id`` (created if missing, ``private`` when
        new) as a :meth:`save_pretrained` folder, model card included (its examples load ``repo_id``).

        The folder is written to a temporary directory and sent with :meth:`huggingface_hub.HfApi.upload_folder`
        (``token``: default the logged-in user, ``hf auth login``; ``revision``: the branch to commit to, created
        when missing; ``create_pr``: open a pull request instead). Returns the URL of the commit (or pull request).
        """
        from ditsam.model.checkpoints import push_to_hub

        return push_to_hub(
            self,
            repo_id,
            private=private,
            token=token,
            revision=revision,
            commit_message=commit_message,
            create_pr=create_pr,
            metrics=metrics,
            training_data=training_data,
            base_model=base_model,
        )

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike[str],
        *,
        revision: str | None = None,
        injection: Injection | None = None,
        config: DITSamConfig | None = None,
        text_name_or_path: str | None = None,
        cache_dir: str | Path | None = None,
        token: str | bool | None = None,
        local_files_only: bool = False,
        force_download: bool = False,
        map_location: str | torch.device = "cpu",
    ) -> "DITSam":
        """A model in eval mode from any source: a :meth:`save_pretrained` folder, a Hugging Face Hub id
        ``owner/name`` (``revision=``; Hub cache, ``HF_HUB_OFFLINE=1`` honoured), or a checkpoint file -- the
        authors' DIT ``.pth`` needs no config (architecture read from its shapes, L-DIT unless
        ``injection="e2e"`` / ``"none"``, BERT config and tokenizer from ``text_name_or_path``, default
        ``bert-base-uncased``); other files need ``config=``. An official SAM file is refused (no text model).
        ``token``, ``cache_dir``, ``local_files_only``, ``force_download``: as in transformers, for a Hub id.
        See :func:`ditsam.model.checkpoints.load_pretrained`.
        """
        from ditsam.model.checkpoints import load_pretrained

        return load_pretrained(
            cls,
            source,
            revision=revision,
            injection=injection,
            config=config,
            text_name_or_path=text_name_or_path,
            cache_dir=cache_dir,
            token=token,
            local_files_only=local_files_only,
            force_download=force_download,
            map_location=map_location,
        )
