"""``ditsam convert``: the authors' .pth into a self-contained save_pretrained folder that loads with no network."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from checkpoint_files import authors_file, cheap_state_dict, logits, official_sam_shapes
from ditsam.cli.main import main
from ditsam.model.config import BACKBONES
from ditsam.model.dit import DITSam


def test_convert_authors_file_then_load_without_network(
    tiny_bert_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
) -> None:
    bert = shutil.copytree(tiny_bert_dir, tmp_path / "bert_copy")  # removed before loading: DST must not need it
    pth = tmp_path / "seg_best.pth"
    source = authors_file(bert, pth, monkeypatch)
    destination = tmp_path / "converted"

    code = main(["convert", str(pth), str(destination), "--text-model", str(bert), "--training-data", "refcoco"])

    assert code == 0
    printed = capsys.readouterr().out
    assert f"reference DIT checkpoint {pth}" in printed
    assert "resized: image_encoder.pos_embed" in printed
    assert "ignored: " in printed and "lang_encoder.bert.pooler" in printed and "query_embeddings" in printed
    assert "'state_dict' entry" in printed and f"wrote {destination}" in printed
    for name in (
        "config.json",
        "model.safetensors",
        "README.md",
        "text_encoder/config.json",
        "text_encoder/tokenizer_config.json",
    ):
        assert (destination / name).is_file(), name
    assert not list(tmp_path.glob(".ditsam-convert-*")), "no staging folder is left behind"
    card = (destination / "README.md").read_text(encoding="utf-8")
    assert "refcoco" in card and "seg_best.pth" in card and "L-DIT" in card

    expected = logits(source)
    shutil.rmtree(bert)
    cache = request.getfixturevalue("no_network")
    loaded = DITSam.from_pretrained(destination)
    assert torch.equal(logits(loaded), expected)
    assert not any(cache.iterdir()), "loading the converted folder wrote nothing to the Hub cache"


def test_convert_refuses_a_non_empty_destination_unless_overwrite(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    destination = tmp_path / "out"
    destination.mkdir()
    stale = destination / "stale.txt"
    stale.write_text("keep me")

    assert main(["convert", str(checkpoint), str(destination)]) == 2
    assert "exists and is not empty; pass --overwrite" in capsys.readouterr().err
    assert stale.read_text() == "keep me"

    assert main(["convert", str(checkpoint), str(destination), "--overwrite"]) == 0
    assert not stale.exists() and (destination / "model.safetensors").is_file()
    expected = DITSam.from_pretrained(checkpoint).state_dict()
    converted = DITSam.from_pretrained(destination).state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in converted.items())

    assert main(["convert", str(checkpoint), str(checkpoint), "--overwrite"]) == 2
    assert "overlaps SRC" in capsys.readouterr().err
    assert main(["convert", str(checkpoint), str(checkpoint / "inner")]) == 2
    assert main(["convert", str(checkpoint), str(stale.parent / "model.safetensors")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_convert_refuses_a_sam_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    size = BACKBONES["vit_b"]
    path = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save(
        cheap_state_dict(
            official_sam_shapes(
                width=size.embed_dim, depth=size.depth, heads=size.num_heads, global_blocks=size.global_attn_indexes
            )
        ),
        path,
    )
    assert main(["convert", str(path), str(tmp_path / "out")]) == 2
    assert "holds no text model" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
