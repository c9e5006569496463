"""Examples for the web demo's page: (image, sentence) pairs from a RefShapes root or a folder of
images, or a few RefShapes images generated for the purpose."""

from __future__ import annotations

import os
from pathlib import Path

from ditsam.data.images import IMAGE_SUFFIXES


def example_pairs(folder: str | os.PathLike, *, limit: int = 8) -> list[tuple[Path, str]]:
    """(image, sentence) examples from ``folder``: a RefShapes root (its refs give one sentence per
    image, evaluation splits first) or any folder of images (sentence left empty)."""
    from ditsam.data.refer import load_refs
    from ditsam.data.refshapes import refshapes_files

    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"examples folder {root} does not exist")
    refs_path, _, _, image_dir = refshapes_files(root)
    pairs: list[tuple[Path, str]] = []
    if refs_path.is_file():
        refs = load_refs(refs_path)  # the restricted unpickler: a crafted refs file runs nothing
        order = {"val": 0, "testA": 1, "testB": 2, "train": 3}
        seen: set[str] = set()
        for ref in sorted(refs, key=lambda r: (order.get(r.get("split"), 4), r.get("ref_id", 0))):
            name = ref.get("file_name")
            if name in seen or not ref.get("sentences") or not (image_dir / name).is_file():
                continue
            seen.add(name)
            pairs.append((image_dir / name, str(ref["sentences"][0]["sent"])))
            if len(pairs) >= limit:
                break
        return pairs
    images = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return [(path, "") for path in images[:limit]]


def make_refshapes_examples(out_dir: str | os.PathLike, *, count: int = 4, seed: int = 0) -> list[tuple[Path, str]]:
    """Generate ``count`` RefShapes evaluation images into ``out_dir`` and return their examples."""
    from ditsam.data.refshapes import generate_refshapes

    counts = {"train": 0, "val": 0, "testA": 0, "testB": 0}
    splits = ("val", "testA", "testB")
    for index in range(count):
        counts[splits[index % len(splits)]] += 1
    generate_refshapes(out_dir, seed=seed, preset="tiny", num_images=counts, overwrite=True)
    return example_pairs(out_dir, limit=count)
