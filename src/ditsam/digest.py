"""The SHA-256 of a file: the one digest run folders, released and shipped models and data sources record."""

from __future__ import annotations

import os


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes (read in chunks by huggingface_hub, which hashes its own downloads so)."""
    from huggingface_hub.utils.sha import sha_fileobj

    with open(path, "rb") as handle:
        return sha_fileobj(handle).hex()
