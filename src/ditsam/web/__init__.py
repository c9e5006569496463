"""The parts of the web demo behind :mod:`ditsam.serve`, one idea per module:
:mod:`~ditsam.web.clicks` (point and box prompts from clicks), :mod:`~ditsam.web.handler` (the
request path, no Gradio) and :mod:`~ditsam.web.examples` (the example images). Import the names from
:mod:`ditsam.serve`; none of these modules imports Gradio.
"""
