"""Experiment trackers through accelerate (``train.log_with``): TensorBoard by default, wandb, mlflow, trackio,
... when installed.

Every name but ``tensorboard`` is accelerate's own tracker (``Accelerator(log_with=...)``, ``init_trackers``,
``accelerator.log``), configured as that tracker's users configure it: ``WANDB_MODE`` / ``WANDB_PROJECT``,
``MLFLOW_TRACKING_URI`` / ``MLFLOW_EXPERIMENT_NAME``, and so on; the project (run) name is the experiment's
``name``. ``tensorboard`` is :func:`make_run_tensorboard`'s tracker of the same interface that keeps the run folder's
layout: ``<run>/tensorboard``, with the events past a resumed checkpoint's step purged (those steps are logged
again, so none appears twice). Every tracker gets the scalars of ``metrics.jsonl`` at their step, the flattened
experiment config once at the start, and the prediction pictures of each evaluation where it takes them
(:data:`IMAGE_TRACKERS`: TensorBoard, wandb, swanlab).

A tracker named but not installed stops training before it starts, naming the pip extra that installs it
(:func:`check_trackers`); accelerate itself would leave it out silently.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from ditsam.config import ConfigError

if TYPE_CHECKING:
    from accelerate import Accelerator

logger = logging.getLogger(__name__)

#: Tracker name (as accelerate's ``log_with`` takes it) -> (the module it needs, the ditsam extra installing it;
#: None: a dependency of ditsam).
TRACKERS: dict[str, tuple[str, str | None]] = {
    "tensorboard": ("tensorboard", None),
    "wandb": ("wandb", "wandb"),
    "mlflow": ("mlflow", "mlflow"),
    "trackio": ("trackio", "trackio"),
    "comet_ml": ("comet_ml", "comet"),
    "aim": ("aim", "aim"),
    "clearml": ("clearml", "clearml"),
    "dvclive": ("dvclive", "dvclive"),
    "swanlab": ("swanlab", "swanlab"),
}
#: Trackers whose ``log_images`` takes accelerate's ``{tag: [picture, ...]}``: the prediction pictures go to these.
IMAGE_TRACKERS = ("tensorboard", "wandb", "swanlab")
#: Trackers that refuse some characters of our metric names, and the name they get: mlflow takes no "@"
#: ("val/p@0.5" is logged as "val/p_at_0.5").
METRIC_NAMES = {"mlflow": lambda name: name.replace("@", "_at_")}
#: The run folder's TensorBoard event folder.
TENSORBOARD_DIR = "tensorboard"
#: Records keys that are the x axis, not a curve.
_AXES = ("step", "epoch")


def check_names(names: Iterable[str], *, field: str = "train.log_with") -> None:
    """ConfigError for a name that is no tracker (listing the known ones) or named twice."""
    names = list(names)
    unknown = [name for name in names if name not in TRACKERS]
    if unknown:
        raise ConfigError(f"{field}: unknown tracker(s) {', '.join(map(repr, unknown))}; known: {', '.join(TRACKERS)}")
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ConfigError(f"{field}: tracker(s) {', '.join(map(repr, twice))} named more than once")


def check_trackers(names: Iterable[str]) -> None:
    """ConfigError naming every tracker of ``names`` whose package is not installed, and its pip extra."""
    missing = [name for name in names if importlib.util.find_spec(TRACKERS[name][0]) is None]
    if missing:
        extras = ",".join(sorted({TRACKERS[name][1] or name for name in missing}))
        raise ConfigError(
            f"train.log_with names {', '.join(missing)}, which is not installed: pip install 'ditsam[{extras}]' "
            f"(or remove it, e.g. train.log_with=[tensorboard])"
        )


def flat_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"train.lr": 1e-4, ...}``: numbers, strings and booleans as they are, lists and None
    as text (what trackers' hyper-parameter tables take)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flat_config(value, prefix=f"{name}."))
        else:
            flat[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


def make_run_tensorboard(folder: Path) -> Any:
    """The TensorBoard tracker of a run (an accelerate ``GeneralTracker``, name ``tensorboard``): a
    ``SummaryWriter`` on ``folder`` opened by ``start()`` with ``purge_step`` (set it before: the step after a
    resumed checkpoint's, or None); scalars by ``log``, HWC uint8 pictures by ``log_images``; main process only."""
    from accelerate.tracking import GeneralTracker

    class _RunTensorBoard(GeneralTracker):
        name = "tensorboard"
        requires_logging_directory = False
        main_process_only = True

        def __init__(self) -> None:
            super().__init__()
            self.folder = folder
            self.purge_step: int | None = None
            self.writer: Any = None

        @property
        def tracker(self) -> Any:
            return self.writer

        def start(self) -> None:
            from accelerate import PartialState
            from torch.utils.tensorboard import SummaryWriter

            if PartialState().is_main_process:
                self.writer = SummaryWriter(str(self.folder), purge_step=self.purge_step)

        def store_init_configuration(self, values: dict) -> None:
            """Nothing: the run folder's config.yaml holds the experiment (and the scalars stay the only events)."""

        def log(self, values: dict, step: int | None = None, **kwargs: Any) -> None:
            if self.writer is not None:
                for key, value in values.items():
                    self.writer.add_scalar(key, value, step)

        def log_images(self, values: dict, step: int | None = None, **kwargs: Any) -> None:
            """``{tag: [HWC uint8 picture, ...]}`` (accelerate's convention); each picture under its tag."""
            if self.writer is not None:
                for key, pictures in values.items():
                    for picture in pictures:
                        self.writer.add_image(key, picture, step, dataformats="HWC")

        def finish(self) -> None:
            if self.writer is not None:
                self.writer.close()
                self.writer = None

    return _RunTensorBoard()


class RunTrackers:
    """The trackers of one training run (see the module docstring).

    Build before the Accelerator (``log_with`` is its argument): the names are checked (unknown: ConfigError;
    not installed: ConfigError naming the extra) before anything else happens. Then :meth:`start` once the
    resumed step is known, :meth:`log` per metrics record, :meth:`log_picture` per prediction picture,
    :meth:`finish` at the end.
    """

    def __init__(self, *, names: Iterable[str], run_dir: Path) -> None:
        self.names = tuple(names)
        check_names(self.names)
        check_trackers(self.names)
        self.tensorboard = make_run_tensorboard(run_dir / TENSORBOARD_DIR) if "tensorboard" in self.names else None
        self.started = False

    @property
    def log_with(self) -> list[Any] | None:
        """accelerate's ``log_with``: the run's TensorBoard tracker and the other trackers' names (None: none)."""
        return [self.tensorboard if name == "tensorboard" else name for name in self.names] or None

    def start(self, accelerator: "Accelerator", *, project: str, config: Mapping[str, Any], resumed_step: int) -> None:
        """Open every tracker (``accelerator.init_trackers``) and store the flattened config."""
        if self.tensorboard is not None:
            # After a resume, events past the checkpoint's step are purged: those steps are logged again.
            self.tensorboard.purge_step = resumed_step + 1 if resumed_step else None
        if self.names:
            accelerator.init_trackers(project, config=flat_config(config))
            self.started = True
            if accelerator.is_main_process:
                logger.info("tracking with %s", ", ".join(self.names))

    def log(self, accelerator: "Accelerator", record: Mapping[str, Any], *, step: int) -> None:
        """The numbers of a metrics record (not its step / epoch) at ``step``."""
        values = {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        values = {k: v for k, v in values.items() if k not in _AXES}
        if not (self.started and values and accelerator.is_main_process):
            return
        for tracker in accelerator.trackers:  # accelerator.log, with each tracker's own metric names
            rename = METRIC_NAMES.get(tracker.name)
            tracker.log({rename(k): v for k, v in values.items()} if rename else values, step=step)

    def log_picture(self, accelerator: "Accelerator", tag: str, path: Path, *, step: int) -> None:
        """A prediction picture (PNG) to every tracker that takes images."""
        if not self.started or not accelerator.is_main_process:
            return
        import numpy as np
        from PIL import Image

        picture = np.asarray(Image.open(path).convert("RGB"))
        for tracker in accelerator.trackers:
            if tracker.name in IMAGE_TRACKERS:
                tracker.log_images({tag: [picture]}, step=step)

    def finish(self, accelerator: "Accelerator") -> None:
        """Close every tracker (once). Not ``accelerator.end_training()``, which also ends the process group: the
        launched processes leave it themselves, after the last collective (:mod:`ditsam.distributed`)."""
        if self.started:
            for tracker in accelerator.trackers:
                tracker.finish()
            accelerator.trackers.clear()
            self.started = False
