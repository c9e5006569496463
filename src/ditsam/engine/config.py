"""Experiment configuration: model + data + training, loaded from YAML with strict keys.

A YAML file may name a ``base`` file (relative to itself) whose values it overrides, so each
experiment of the paper is a few lines on top of one base. Experiments shipped with the package
live in ``ditsam/configs`` and are named ``SCALE/EXPERIMENT`` without the extension (``refcoco/ldit``).
Each scale folder holds its ``_base.yaml`` and the experiments only it has (``refcoco/ldit_vith``);
the experiments every scale of :data:`VARIANT_SCALES` shares are written once in
``configs/variants/`` and laid on the scale's base: ``refshapes/ldit`` is ``refshapes/_base.yaml``
updated with ``variants/ldit.yaml``, named ``refshapes-ldit``.
"""

from __future__ import annotations

import dataclasses
import math
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Mapping

from ditsam.config import ConfigBase, ConfigError, load_yaml
from ditsam.defaults import MASK_THRESHOLD, check_threshold
from ditsam.engine.trackers import check_names
from ditsam.model.config import DITSamConfig


@dataclasses.dataclass
class ScheduleConfig(ConfigBase):
    """Learning-rate schedule (per optimiser step)."""

    # "cosine": cosine decay to min_lr after warm-up (reference code); "step": x decay_factor at decay_epochs (paper).
    kind: Literal["cosine", "step"] = "cosine"
    # Linear warm-up length in epochs (fractions allowed).
    warmup_epochs: float = 3.0
    # Learning rate at the first warm-up step.
    warmup_start_lr: float = 1e-7
    # Final learning rate of the cosine schedule.
    min_lr: float = 1e-6
    # Epochs at which the step schedule multiplies the learning rate by decay_factor.
    decay_epochs: tuple[float, ...] = (30.0, 35.0)
    # Step-schedule multiplier.
    decay_factor: float = 0.2


@dataclasses.dataclass
class PromptSamplingConfig(ConfigBase):
    """How point and box prompts are drawn from the target masks in training (``train.prompt_mix``)."""

    # Positive clicks per point prompt: uniform in 1..max_points (1: Table 4's Mix, one click).
    max_points: int = 1
    # Background clicks per point prompt: uniform in 0..max_negatives (SAM's negative clicks).
    max_negatives: int = 0
    # Box jitter: each side moves by N(0, box_noise x the side's length) pixels (0: the exact box).
    box_noise: float = 0.0

    def __post_init__(self) -> None:
        if not (isinstance(self.max_points, int) and self.max_points >= 1):
            raise ConfigError(f"train.prompt_sampling.max_points must be an integer >= 1, got {self.max_points!r}")
        if not (isinstance(self.max_negatives, int) and self.max_negatives >= 0):
            raise ConfigError(
                f"train.prompt_sampling.max_negatives must be an integer >= 0, got {self.max_negatives!r}"
            )
        if not self.box_noise >= 0:
            raise ConfigError(f"train.prompt_sampling.box_noise must be >= 0, got {self.box_noise!r}")


@dataclasses.dataclass
class DataConfig(ConfigBase):
    """Where the data is and which splits to use."""

    # "refshapes" / "grefshapes" (generated on first use; grefshapes: sentences naming several objects or
    # none), "refer" (original RefCOCO release), "grefcoco" (generalized), "simrec", "custom" (JSONL).
    format: Literal["refshapes", "grefshapes", "refer", "grefcoco", "simrec", "custom"] = "refshapes"
    # refer/refshapes: folder holding <dataset>/refs(<split_by>).p; simrec: the anns JSON; custom: a records
    # file (docs/record.md: JSONL, or a JSON array such as `ditsam predict`'s predictions.json) or a predict --out folder.
    root: str = "data/refshapes"
    # REFER dataset name: refcoco, refcoco+, refcocog, refshapes.
    dataset: str = "refshapes"
    # REFER split scheme: unc, umd, google.
    split_by: str = "unc"
    # Image folder (refer/simrec); empty = <root>/images for refshapes.
    image_dir: str = ""
    # SimREC masks folder (masks/<dataset>).
    mask_dir: str = ""
    # Split used for training.
    train_split: str = "train"
    # Splits evaluated after training epochs and by `ditsam eval` by default.
    eval_splits: tuple[str, ...] = ("val",)
    # Split that selects the best checkpoint.
    select_split: str = "val"
    # RefShapes generator preset (tiny | demo | small | large), used when format == refshapes.
    refshapes_preset: str = "tiny"
    # RefShapes generator seed.
    refshapes_seed: int = 0
    # RefShapes only: > 0 trains on freshly generated scenes, this many samples per epoch (an
    # endless train split, see ditsam.data.refshapes_stream), instead of the written train split.
    train_stream_samples: int = 0
    # Consecutive stream samples (one batch, in order) drawn from one scene, each naming another of its objects.
    train_stream_items_per_scene: int = 4
    # Data-loader worker processes.
    num_workers: int = 2
    # Long-side sizes drawn at random in training, as fractions of the model's image_size
    # (reference: 320..512 step 32 at 512).
    train_scales: tuple[float, ...] = (0.625, 0.6875, 0.75, 0.8125, 0.875, 0.9375, 1.0)
    # Photometric augmentation (colour jitter p 0.8, Gaussian blur) in training.
    photometric: bool = True
    # Horizontal flip probability in training (swaps the words left/right).
    flip_probability: float = 0.5
    # custom only: records with a "score" (a prediction's IoU estimate) below this are left out of every split, so
    # pseudo-labels train only where the model was confident (None: any score; records without one always train).
    min_score: float | None = None
    # Control experiment: every sample, in training and evaluation, gets this sentence instead of
    # its own, so the model must guess without words ("" = off, the normal task).
    fixed_sentence: str = ""

    def __post_init__(self) -> None:
        if self.min_score is None:
            return
        if not math.isfinite(self.min_score):
            raise ConfigError(f"min_score must be a finite number (a score) or null, got {self.min_score}")
        if self.format != "custom":
            raise ConfigError(f"min_score applies to data.format=custom (records with scores), not {self.format!r}")


@dataclasses.dataclass
class TrainConfig(ConfigBase):
    """Optimisation recipe (reference code defaults)."""

    # Number of epochs (one sample per referred object per epoch).
    epochs: int = 40
    # Effective batch size over all processes and accumulation steps.
    batch_size: int = 64
    # Per-process batch per forward; batch_size / (micro_batch_size * processes) steps are accumulated.
    micro_batch_size: int = 64
    # Adam learning rate after warm-up.
    lr: float = 1e-4
    # Adam betas: the reference code's second moment 0.98, not PyTorch's 0.999.
    betas: tuple[float, float] = (0.9, 0.98)
    # Adam epsilon: the reference code's 1e-9 (PyTorch's default is 1e-8).
    eps: float = 1e-9
    # Weight decay (Adam, not AdamW; the reference uses none).
    weight_decay: float = 0.0
    # Weight of a soft Dice loss added to the BCE (the paper: 0, BCE only; helps tiny CPU runs on small objects).
    dice_weight: float = 0.0
    # Weight of the no-target classification loss (BCE on the presence logit; models with
    # model.no_target_head only, see ditsam.model.presence).
    no_target_loss_weight: float = 1.0
    # Weight of SAM's IoU-head loss (MSE of the predicted IoUs against each mask's actual IoU with the
    # target), for models with model.multimask_output (whose segmentation loss takes the best of the 3 masks).
    iou_loss_weight: float = 1.0
    # Also train the IoU head of single-mask models with that loss (False: their loss is the paper's).
    iou_loss_single_mask: bool = False
    # Gradient-norm clip (0 = off).
    grad_clip: float = 0.15
    # Learning-rate schedule.
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    # EMA decay of the weights used for evaluation and checkpoints (0 = no EMA).
    ema_decay: float = 0.9997
    # Ramp the EMA decay up as min(ema_decay, (1 + n) / (10 + n)) over updates n (False = reference: fixed).
    ema_warmup: bool = True
    # "auto" (bf16 on GPU, fp32 on CPU: bf16 autocast trained the tiny RefShapes model 1.7x slower on an AMX Xeon,
    # 24 vs 41 samples/s, its products too small for the casts to pay), "no", "bf16", "fp16".
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    # Random seed (model init, data order, augmentation, dropout).
    seed: int = 0
    # Stop after this many optimiser steps (None = run all epochs).
    max_steps: int | None = None
    # Evaluate every N epochs (and after the last).
    eval_every_epochs: int = 1
    # Also write the resumable "last" checkpoint every N optimiser steps (None = end of epoch only).
    save_every_steps: int | None = None
    # Log loss / lr every N optimiser steps.
    log_every_steps: int = 10
    # Sigmoid threshold of the predicted mask (reference: 0.35).
    threshold: float = MASK_THRESHOLD
    # Checkpoint-selection metric on data.select_split: "oiou", "miou" or "p@0.5" .. "p@0.9"; for
    # generalized data (grefcoco, grefshapes) "giou", "ciou", "n_acc", "t_acc" or "p@0.7" .. "p@0.9".
    select_metric: str = "oiou"
    # Prediction pictures written to the trackers that take images and to the run folder per evaluation.
    num_visualizations: int = 6
    # Experiment trackers, through accelerate's log_with (ditsam.engine.trackers): "tensorboard" (<run>/tensorboard),
    # "wandb", "mlflow", "trackio", "comet_ml", "aim", "clearml", "dvclive", "swanlab" once installed (pip extras of the
    # same names; comet_ml: comet), configured by their own environment variables; [] = metrics.jsonl only.
    log_with: tuple[str, ...] = ("tensorboard",)
    # Table 4 "Mix": probabilities that a micro-batch is prompted by (text, a point, a box); points
    # and boxes are drawn from the ground-truth masks. (1, 0, 0) = text only.
    prompt_mix: tuple[float, float, float] = (1.0, 0.0, 0.0)
    # How the point and box prompts of prompt_mix are drawn.
    prompt_sampling: PromptSamplingConfig = dataclasses.field(default_factory=PromptSamplingConfig)
    # Prompt of training's evaluations (and so of the "best" checkpoint): "text", "box" (the ground-truth
    # box) or "points" (5 clicks on the ground-truth mask), as `ditsam eval --prompt`.
    eval_prompt: Literal["text", "points", "box"] = "text"
    # Weights to start from (empty = random init): official SAM by name (sam_vit_b / sam_vit_l / sam_vit_h,
    # downloaded once into torch's hub cache, hash-checked), official EfficientSAM by name (efficientsam_ti /
    # efficientsam_s, downloaded once, content- and SHA-256-checked), the authors' released DIT by name (dit-refcoco,
    # dit-refcoco+, dit-refcocog, dit-grefcoco: downloaded once, SHA-256 checked), an official SAM / EfficientSAM or
    # reference-DIT .pth, a ditsam folder, or a Hugging Face Hub id owner/name (a save_pretrained folder or one
    # .pth there).
    init_checkpoint: str = ""
    # What trains: "full" (everything the model config leaves trainable), "frozen" (only the text injection,
    # the mask decoder and W_o; ViT, BERT and prompt encoder frozen), "lora" (as frozen, plus LoRA adapters
    # on the ViT attention projections qkv / proj, merged into the weights in every saved checkpoint).
    finetune: Literal["full", "frozen", "lora"] = "full"
    # LoRA rank r of the adapters (finetune == "lora").
    lora_rank: int = 8
    # LoRA scale numerator: the adapter update is multiplied by lora_alpha / lora_rank (finetune == "lora").
    lora_alpha: float = 16.0

    def __post_init__(self) -> None:
        for name in ("dice_weight", "no_target_loss_weight", "iou_loss_weight"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"train.{name} must be a weight >= 0, got {getattr(self, name)}")
        check_threshold(self.threshold, name="train.threshold", error=ConfigError)
        if len(self.prompt_mix) != 3 or min(self.prompt_mix) < 0 or not sum(self.prompt_mix) > 0:
            raise ConfigError(
                f"train.prompt_mix must be 3 weights >= 0 (text, point, box) with a positive sum, got {self.prompt_mix!r}"
            )
        check_names(self.log_with, field="log_with")


@dataclasses.dataclass
class ExperimentConfig(ConfigBase):
    """One experiment: what to build, on what data, how to train."""

    # Name used for the run folder.
    name: str = "experiment"
    # Folder under which run folders are created.
    output_dir: str = "runs"
    # What to build; saved as every checkpoint's config.json.
    model: DITSamConfig = dataclasses.field(default_factory=DITSamConfig)
    # Which data, where it is, how it is sampled and augmented.
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    # Optimiser, schedule, EMA, evaluation and checkpoint cadence.
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_yaml_chain(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"config {path} includes itself through 'base'")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read config {path}: {error}") from error
    data = load_yaml(text, where=str(path)) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not (path.parent / base).is_file():
        raise ConfigError(f"{path}: base {base!r} is not a config file (a YAML path relative to {path.parent})")
    return _deep_merge(_read_yaml_chain(path.parent / base, (*seen, path)), data)


#: Scale folders whose experiments include every shared file of ``configs/variants``.
VARIANT_SCALES = ("refcoco", "refshapes")
VARIANTS_DIR = "variants"


def packaged_config_dir() -> Path:
    return Path(str(resources.files("ditsam") / "configs"))


def list_experiments() -> list[str]:
    """Every packaged experiment name: the scale folders' own files and the shared variants per scale."""
    root = packaged_config_dir()
    names = {
        str(p.relative_to(root).with_suffix(""))
        for p in root.rglob("*.yaml")
        if not p.name.startswith("_") and p.parent.name != VARIANTS_DIR
    }
    names.update(f"{scale}/{variant}" for scale in VARIANT_SCALES for variant in _shared_variants(root))
    return sorted(names)


def _shared_variants(root: Path) -> list[str]:
    return sorted(p.stem for p in (root / VARIANTS_DIR).glob("*.yaml") if not p.name.startswith("_"))


def read_experiment(name_or_path: str) -> dict[str, Any]:
    """The merged, unvalidated mapping of a YAML path or a packaged experiment name (``refcoco/ldit``)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        return _read_yaml_chain(path)
    root = packaged_config_dir()
    packaged = root / f"{name_or_path}.yaml"
    if packaged.is_file() and packaged.parent.name != VARIANTS_DIR:
        return _read_yaml_chain(packaged)
    scale, _, variant = name_or_path.partition("/")
    shared = root / VARIANTS_DIR / f"{variant}.yaml"
    if scale in VARIANT_SCALES and "/" not in variant and shared.is_file():
        data = _deep_merge(_read_yaml_chain(root / scale / "_base.yaml"), _read_yaml_chain(shared))
        data["name"] = f"{scale}-{variant.replace('_', '-')}"
        return data
    known = ", ".join(list_experiments())
    raise ConfigError(f"unknown experiment {name_or_path!r}: give a .yaml path or one of: {known}")


def load_experiment(name_or_path: str, overrides: Mapping[str, Any] | None = None) -> ExperimentConfig:
    """Read an experiment (YAML chain through ``base``), apply dotted overrides, validate strictly."""
    config = ExperimentConfig.from_dict(read_experiment(name_or_path))
    if overrides:
        config = config.with_overrides(overrides)
    return config
