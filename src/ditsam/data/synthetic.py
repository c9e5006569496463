"""Old home of RefShapes, kept so that ``from ditsam.data.synthetic import ...`` still works: the
generator now lives in the :mod:`ditsam.data.refshapes` package."""

from ditsam.data.refshapes import *  # noqa: F403
from ditsam.data.refshapes import __all__  # noqa: F401
