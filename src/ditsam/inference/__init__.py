"""Running the model on user inputs, the parts of :class:`ditsam.api.Segmenter`, one idea per module:
:mod:`~ditsam.inference.result` (what a prediction returns), :mod:`~ditsam.inference.devices` (device and
precision), :mod:`~ditsam.inference.prompts` (point and box prompts) and :mod:`~ditsam.inference.jobs` (inputs
paired into jobs and batched). Nothing here imports torch at import time.
"""
