"""Learning-rate schedules of the paper and the reference code, as multipliers of the base lr."""

from __future__ import annotations

import math

from ditsam.engine.config import ScheduleConfig


def learning_rate(step: int, *, steps_per_epoch: int, epochs: int, base_lr: float, config: ScheduleConfig) -> float:
    """The learning rate at optimiser step ``step`` (0-based).

    Linear warm-up from ``config.warmup_start_lr`` to ``base_lr`` over ``config.warmup_epochs``,
    then either a cosine decay to ``config.min_lr`` at the end of the run (reference code)
    or a step decay by ``config.decay_factor`` at each of ``config.decay_epochs`` (paper text);
    ``epochs`` is the length of the whole run.
    """
    warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))
    if step < warmup_steps:
        return config.warmup_start_lr + (base_lr - config.warmup_start_lr) * step / warmup_steps
    if config.kind == "cosine":
        total = max(epochs * steps_per_epoch - warmup_steps, 1)
        progress = min((step - warmup_steps) / total, 1.0)
        return config.min_lr + (base_lr - config.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    epoch = step / steps_per_epoch
    drops = sum(1 for boundary in config.decay_epochs if epoch >= boundary)
    return base_lr * config.decay_factor**drops
