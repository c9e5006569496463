"""ditsam: Deep Instruction Tuning (DIT) for the Segment Anything Model."""

__version__ = "0.1.0"
