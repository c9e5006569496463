"""Defaults shared by the library, the command line and the training configs; importing this module
costs nothing (no torch), so a CLI's argument parser can use it."""

# Sigmoid threshold of a predicted mask: a pixel is foreground where sigmoid(logit) > MASK_THRESHOLD
# (the paper's and the authors' code's value). Every default threshold in ditsam is this one.
MASK_THRESHOLD = 0.35


def check_threshold(threshold: float, *, name: str = "threshold", error: type[ValueError] = ValueError) -> float:
    """``threshold`` as a float; unless 0 < threshold < 1, ``error`` (a ValueError) naming ``name``."""
    if not 0.0 < threshold < 1.0:
        raise error(f"{name} must lie strictly between 0 and 1, got {threshold}")
    return float(threshold)
