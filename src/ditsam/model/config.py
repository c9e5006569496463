"""Model configuration: one dataclass, every field commented, saved inside every checkpoint."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Literal, Mapping, NamedTuple

from ditsam.config import ConfigBase, ConfigError
from ditsam.model.text import TextConfig


class BackboneSize(NamedTuple):
    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    # Whose prompt encoder and mask decoder go with the ViT: one of FAMILIES.
    family: str = "sam"


# The model families (ditsam.model.family builds each one's parts): Meta's SAM, and EfficientSAM
# (yformer/EfficientSAM: a plain ViT without relative positions, its own prompt encoder and mask decoder).
FAMILIES = ("sam", "efficientsam")
Family = Literal["sam", "efficientsam"]

# SAM's three ViT sizes (segment-anything build_sam.py) and EfficientSAM's two (build_efficient_sam.py:
# 192 / 384 wide, 12 blocks, heads of 64, every block global).
BACKBONES: dict[str, BackboneSize] = {
    "vit_b": BackboneSize(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": BackboneSize(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": BackboneSize(1280, 32, 16, (7, 15, 23, 31)),
    "efficientsam_ti": BackboneSize(192, 12, 3, (), "efficientsam"),
    "efficientsam_s": BackboneSize(384, 12, 6, (), "efficientsam"),
}

logger = logging.getLogger(__name__)

# The names of ditsam.model.inject.INJECTIONS (a test checks that the two agree).
Injection = Literal["none", "e2e", "layerwise", "crossattn", "crossattn_ffn"]

# Flat keys of configs saved before the knobs moved into ``injection_options`` -> their new names.
LEGACY_INJECTION_KEYS = {
    "injection_dropout": "dropout",
    "injection_zero_init": "zero_init",
    "static_tokens": "static_tokens",
    "refine_text_per_layer": "refine_text_per_layer",
}


@dataclasses.dataclass
class InjectionConfig(ConfigBase):
    """The knobs of the text-injection variants (:mod:`ditsam.model.inject`); each variant reads its own."""

    # Dropout on the text features before each L-DIT projection (reference: 0.1).
    dropout: float = 0.1
    # Zero-initialise the L-DIT projections, so training starts from SAM's encoder (reference: True).
    zero_init: bool = True
    # Learnable static tokens appended to the projected text tokens of E-DIT / L-DIT (Table 2); 0 = off.
    static_tokens: int = 0
    # Per-layer text refresh for E-DIT; None = on exactly when the image encoder is frozen (paper).
    refine_text_per_layer: bool | None = None


def nest_legacy_injection_keys(data: Mapping[str, Any], *, prefix: str = "") -> dict[str, Any]:
    """``data`` with old flat injection keys (``injection_dropout``, ``static_tokens``, ...) moved under
    ``injection_options``; a flat key wins over a nested one. Logs one line when anything moved."""
    flat = [key for key in LEGACY_INJECTION_KEYS if key in data]
    if not flat:
        return dict(data)
    moved = dict(data)
    options = moved.get("injection_options")
    if not isinstance(options, (ConfigBase, Mapping, type(None))):
        raise ConfigError(f"{prefix}injection_options: expected a mapping of InjectionConfig fields, got {options!r}")
    options = dict(options.to_dict() if isinstance(options, ConfigBase) else options or {})
    for key in flat:
        options[LEGACY_INJECTION_KEYS[key]] = moved.pop(key)
    moved["injection_options"] = options
    logger.info("config: old key(s) %s read as %sinjection_options.*", ", ".join(prefix + k for k in flat), prefix)
    return moved


@dataclasses.dataclass
class DITSamConfig(ConfigBase):
    """Everything needed to rebuild a DITSam model (weights aside)."""

    # Image-encoder size: SAM's "vit_b" | "vit_l" | "vit_h", EfficientSAM's "efficientsam_ti" |
    # "efficientsam_s", or "custom" to use the four fields below.
    backbone: Literal["vit_b", "vit_l", "vit_h", "efficientsam_ti", "efficientsam_s", "custom"] = "vit_b"
    # Whose prompt encoder and mask decoder: "sam" | "efficientsam"; None = the backbone's (custom: "sam").
    family: Family | None = None
    # Custom backbone width (ignored unless backbone == "custom").
    embed_dim: int | None = None
    # Custom backbone depth, in blocks.
    depth: int | None = None
    # Custom backbone attention heads.
    num_heads: int | None = None
    # Custom backbone blocks using global attention in the "windowed" layout.
    global_attn_indexes: tuple[int, ...] | None = None
    # ViT patch size in pixels.
    patch_size: int = 16
    # Square model input in pixels (the reference code trains at 512; SAM at 1024).
    image_size: int = 512
    # "global": every block attends globally (reference code); "windowed": SAM's window/global layout
    # (SAM family only: EfficientSAM's ViT has no windows).
    attention: Literal["global", "windowed"] = "global"
    # Initial absolute position embedding: "zeros" (SAM; pretrained weights replace it) or "sincos"
    # (fixed 2-D sine-cosine codes, a learnable start for models trained from scratch).
    pos_embed_init: Literal["zeros", "sincos"] = "zeros"
    # SAM's decomposed relative-position bias in the ViT's attention (official SAM checkpoints carry it);
    # None = the family's: on for SAM, off for EfficientSAM (whose ViT has none).
    use_rel_pos: bool | None = None
    # Window side, in patches, of the windowed blocks.
    window_size: int = 14
    # MLP hidden width / embed_dim in the ViT blocks.
    mlp_ratio: float = 4.0
    # Prompt / decoder width (SAM: 256).
    prompt_embed_dim: int = 256
    # How text enters the ViT: "none" (decoder only), "e2e" (E-DIT), "layerwise" (L-DIT),
    # "crossattn" / "crossattn_ffn" (Table 3).
    injection: Injection = "layerwise"
    # The variants' knobs: dropout, zero_init, static_tokens, refine_text_per_layer.
    injection_options: InjectionConfig = dataclasses.field(default_factory=InjectionConfig)
    # Two-way transformer layers added to SAM's 2 in the mask decoder (Table 1 "Add N dec layers").
    extra_decoder_layers: int = 0
    # Mask-decoder MLP width (SAM: 2048).
    decoder_mlp_dim: int = 2048
    # Mask-decoder attention heads (SAM: 8).
    decoder_num_heads: int = 8
    # Mask text [PAD] tokens in ViT and decoder attention; False reproduces the reference code.
    mask_text_padding: bool = True
    # Predict SAM's 3 masks (tokens 1..3) instead of the single mask of token 0 (reference: False); the
    # prediction is the one with the highest predicted IoU (ditsam.model.prediction), trained as SAM is.
    multimask_output: bool = False
    # Freeze the ViT except the injection parameters (Table 1 "*").
    freeze_image_encoder: bool = False
    # Upsample the low-res logits with align_corners=True (reference code) or False (SAM).
    upsample_align_corners: bool = True
    # Generalized RIS (gRefCOCO): a head on the decoder's IoU token predicts, per sentence, whether
    # anything is referred (ditsam.model.presence); False builds no head (checkpoints unchanged).
    no_target_head: bool = False
    # Recompute ViT blocks in the backward pass to save memory (ViT-L/H training).
    gradient_checkpointing: bool = False
    # The BERT: which one, how many tokens, which layer's features, whether it trains.
    text: TextConfig = dataclasses.field(default_factory=TextConfig)

    def __post_init__(self) -> None:
        if self.backbone == "custom":
            missing = [k for k in ("embed_dim", "depth", "num_heads") if getattr(self, k) is None]
            if missing:
                raise ConfigError(f"backbone 'custom' needs {', '.join(missing)}")
        if self.patch_size < 1 or self.image_size < 1:
            raise ConfigError(f"patch_size {self.patch_size} and image_size {self.image_size} must be positive")
        if self.image_size % self.patch_size:
            raise ConfigError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        static_tokens = self.injection_options.static_tokens
        if static_tokens < 0 or self.extra_decoder_layers < 0:
            raise ConfigError("static_tokens and extra_decoder_layers must be >= 0")
        if static_tokens and self.injection not in ("e2e", "layerwise"):
            raise ConfigError(f"static_tokens need a token injection (e2e or layerwise), not {self.injection!r}")
        if self.global_attn_indexes is not None:
            self.global_attn_indexes = tuple(self.global_attn_indexes)
        self._check_family()

    def _check_family(self) -> None:
        """The family fits the backbone, and the EfficientSAM family gets no SAM-only ViT features."""
        named = BACKBONES[self.backbone].family if self.backbone != "custom" else None
        if named is not None and self.family is not None and self.family != named:
            raise ConfigError(f"family {self.family!r} contradicts backbone {self.backbone!r}, a {named!r} backbone")
        if self.model_family == "efficientsam":
            if self.attention == "windowed":
                raise ConfigError(
                    f"attention 'windowed': EfficientSAM's ViT ({self.backbone}) has no windowed blocks; use 'global'"
                )
            if self.use_rel_pos:
                raise ConfigError(
                    f"use_rel_pos true: EfficientSAM's ViT ({self.backbone}) has no relative-position tables; "
                    f"leave it unset (null) or false"
                )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, prefix: str = "") -> DITSamConfig:
        """As :meth:`ConfigBase.from_dict`; configs saved with the old flat injection keys still load."""
        if isinstance(data, Mapping):
            data = nest_legacy_injection_keys(data, prefix=prefix)
        return super().from_dict(data, prefix=prefix)

    @property
    def model_family(self) -> Family:
        """The family whose parts the model is built from: ``family``, else the backbone's."""
        if self.family is not None:
            return self.family
        return BACKBONES[self.backbone].family if self.backbone != "custom" else "sam"  # type: ignore[return-value]

    def resolved_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` with the fields whose None means "the family's choice" filled in, for comparing
        what two configs build (a config saved before such a field existed reads the same)."""
        values = self.to_dict()
        values["family"], values["use_rel_pos"] = self.model_family, self.rel_pos
        return values

    @property
    def rel_pos(self) -> bool:
        """Whether the ViT carries SAM's relative-position bias: ``use_rel_pos``, else the family's default."""
        return self.use_rel_pos if self.use_rel_pos is not None else self.model_family == "sam"

    @property
    def size(self) -> BackboneSize:
        """The backbone's dimensions, from the table or the custom fields."""
        if self.backbone != "custom":
            return BACKBONES[self.backbone]
        depth = int(self.depth)  # type: ignore[arg-type]
        return BackboneSize(
            int(self.embed_dim),
            depth,
            int(self.num_heads),  # type: ignore[arg-type]
            tuple(self.global_attn_indexes) if self.global_attn_indexes is not None else (depth - 1,),
            self.model_family,
        )

    @property
    def grid(self) -> int:
        """Patches per side of the image embedding."""
        return self.image_size // self.patch_size


def _merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated with ``overrides``, nested dicts merged key by key (a config object is a dict here)."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, ConfigBase):
            value = value.to_dict()
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def reference_config(**overrides: object) -> DITSamConfig:
    """The preset that reproduces the authors' code (wysnzzzz/DIT): global attention everywhere,
    BERT's first layer, no padding mask, single-mask decoder, align_corners upsampling.

    ``overrides`` are merged into the preset, nested sections key by key:
    ``reference_config(text={"name_or_path": "my-bert"})`` keeps ``text.hidden_layer = 1``.
    """
    base = DITSamConfig(
        attention="global", mask_text_padding=False, multimask_output=False, upsample_align_corners=True
    )
    data = base.to_dict()
    data["text"]["hidden_layer"] = 1
    data = nest_legacy_injection_keys(_merge(data, overrides))
    if data.get("injection") == "e2e" and data["injection_options"].get("refine_text_per_layer") is None:
        # The reference E-DIT re-projects the text tokens before every block, frozen backbone or not.
        data["injection_options"]["refine_text_per_layer"] = True
    return DITSamConfig.from_dict(data)
