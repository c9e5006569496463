"""The parts of the web demo behind :mod:`ditsam.serve`, one idea per module:
:mod:`~ditsam.web.clicks` (point and box prompts from clicks), :mod:`~ditsam.web.handler` (the
request path, no Gradio), :mod:`~ditsam.web.examples` (the example images), :mod:`~ditsam.web.access`
(login credentials, the loopback check) and :mod:`~ditsam.web.limits` (the queue's size and the time
limit per request). Import the names from
:mod:`ditsam.serve`; none of these modules imports Gradio.
"""
