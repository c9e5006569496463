"""The parts of :class:`ditsam.api.Segmenter`, one idea per module: :mod:`~ditsam.predictor.result`
(what a prediction returns), :mod:`~ditsam.predictor.devices` (device and precision),
:mod:`~ditsam.predictor.prompts` (point and box prompts) and :mod:`~ditsam.predictor.jobs` (inputs
paired into jobs and batched). Import the names from :mod:`ditsam.api`; nothing here imports torch
at import time.
"""
