"""The software versions a saved artefact records, so that a checkpoint folder, an evaluation's
``results.json`` or a training run can be traced back to the code that wrote it (and an unexpected
number later explained by an upgrade rather than guessed at).

The one version source is :data:`ditsam.__version__`; the package metadata and ``ditsam --version`` read it.
"""

from __future__ import annotations

#: Key under which artefacts store :func:`software_versions`.
VERSIONS_KEY = "versions"


def software_versions() -> dict[str, str]:
    """``{"ditsam": ..., "torch": ...}``: this package's version and the torch it runs on."""
    import torch

    from ditsam import __version__

    return {"ditsam": __version__, "torch": str(torch.__version__)}
