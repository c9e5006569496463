"""The model card every save_pretrained folder carries, and push_to_hub (huggingface_hub faked: no network)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ditsam.model.checkpoints.card import CARD_FILE, CardFacts, build_model_card, citation_bibtex
from ditsam.model.checkpoints.ditsam_folder import CONFIG_FILE, TEXT_DIR, WEIGHTS_FILE
from ditsam.model.config import reference_config
from ditsam.model.dit import DITSam
from helpers import tiny_config

METRICS = {"val": {"oiou": 72.346, "miou": 74.1, "p@0.5": 83.0}, "testA": {"oiou": 75.5, "miou": 77.0}}


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    header, _ = card[len("---\n") :].split("\n---\n", 1)
    return yaml.safe_load(header)


def test_save_pretrained_writes_a_card(tiny_bert_dir: Path, tmp_path: Path) -> None:
    model = DITSam(tiny_config(tiny_bert_dir, extra_decoder_layers=2))
    folder = model.save_pretrained(
        tmp_path / "ckpt", metrics=METRICS, training_data=["refcoco", "refcoco+"], base_model="facebook/sam-vit-base"
    )

    card = (folder / CARD_FILE).read_text(encoding="utf-8")
    header = front_matter(card)
    assert header["library_name"] == "ditsam" and header["pipeline_tag"] == "image-segmentation"
    assert header["datasets"] == ["refcoco", "refcoco+"] and header["base_model"] == "facebook/sam-vit-base"
    assert "# DIT-SAM: L-DIT (custom ViT, 64 px)" in card
    assert "width 32, 2 blocks, 2 heads" in card and "depth 4" in card
    assert f"| Parameters | {sum(p.numel() for p in model.parameters()):,} |" in card
    assert "| split | oiou | miou | p@0.5 |" in card
    assert "| val | 72.35 | 74.10 | 83.00 |" in card
    assert "| testA | 75.50 | 77.00 |  |" in card
    assert 'Segmenter.from_pretrained("path/to/this/folder")' in card
    assert "Huang" in card and "Deep Instruction Tuning for Segment Anything Model" in card and "2404.00650" in card
    assert citation_bibtex() in card
    assert DITSam.from_pretrained(folder).config.extra_decoder_layers == 2  # the card does not disturb loading


def test_card_without_metrics_or_data_says_so() -> None:
    facts = CardFacts(num_parameters=93_735_472, text_hidden_size=768, text_layers=12)
    card = build_model_card(
        reference_config(injection="e2e"),
        facts=facts,
        training_data="my scanned forms",
        base_model="seg_best.pth",
        model_id="me/edit-forms",
    )
    header = front_matter(card)
    assert "datasets" not in header and "base_model" not in header  # a sentence and a file name are not Hub ids
    assert "- my scanned forms" in card and "Weights from `seg_best.pth`." in card
    assert "Not recorded with this checkpoint: run `ditsam eval`" in card
    assert "E-DIT" in card and "SAM ViT-B: width 768, 12 blocks, 12 heads" in card
    assert "first layer's output" in card and "[PAD] positions attended" in card
    assert 'Segmenter.from_pretrained("me/edit-forms")' in card and "--checkpoint me/edit-forms" in card
    with pytest.raises(TypeError, match=r"metrics\['val'\] must map metric names"):
        build_model_card(reference_config(), facts=facts, metrics={"val": 71.0})  # type: ignore[dict-item]


def test_card_header_has_licence_and_model_index(tiny_bert_dir: Path, tmp_path: Path) -> None:
    model = DITSam(tiny_config(tiny_bert_dir))
    folder = model.save_pretrained(tmp_path / "ckpt", metrics=METRICS, training_data="refcoco", model_id="me/ldit")
    card = (folder / CARD_FILE).read_text(encoding="utf-8")
    header = front_matter(card)
    assert header["license"] == "apache-2.0"
    (entry,) = header["model-index"]
    assert entry["name"] == "me/ldit"
    by_split = {result["dataset"]["split"]: result for result in entry["results"]}
    assert set(by_split) == {"val", "testA"}
    assert by_split["val"]["dataset"]["type"] == "refcoco" and by_split["val"]["task"]["type"] == "image-segmentation"
    assert {m["type"]: m["value"] for m in by_split["val"]["metrics"]} == METRICS["val"]
    assert {m["name"] for m in by_split["val"]["metrics"]} == {"oIoU", "mIoU", "P@0.5"}
    assert "share of sentences with IoU >= X" in card and "`ditsam eval --protocol exact`" in card
    assert 'DITSam.from_pretrained("me/ldit", revision="main")' in card and "local_files_only=True" in card
    assert "## Base model" in card and "Not recorded with this checkpoint" in card


def test_card_states_the_protocol_of_the_scores() -> None:
    facts = CardFacts(num_parameters=1, text_hidden_size=768, text_layers=12)
    # A row of ditsam eval's results.json: the protocol and bookkeeping beside the scores.
    row = {
        "oiou": 70.0,
        "p@0.5": 80.0,
        "count": 9,
        "protocol": "reference",
        "processes": 1,
        "versions": {"ditsam": "0.1.0", "torch": "2.13.0"},
    }
    card = build_model_card(reference_config(), facts=facts, metrics={"val": row})
    assert "share of sentences with IoU > X" in card and "--protocol reference" in card
    assert "| split | oiou | p@0.5 | count |" in card and "| val | 70.00 | 80.00 | 9 |" in card
    (entry,) = front_matter(card)["model-index"]
    assert [m["type"] for m in entry["results"][0]["metrics"]] == ["oiou", "p@0.5"]
    assert entry["results"][0]["dataset"]["name"] == "evaluation data"
    exact = build_model_card(reference_config(), facts=facts, metrics={"val": {"miou": 1.0}}, protocol="exact")
    assert "IoU >= X" in exact
    with pytest.raises(ValueError, match="mix evaluation protocols"):
        build_model_card(reference_config(), facts=facts, metrics={"val": row, "testA": {**row, "protocol": "exact"}})
    with pytest.raises(ValueError, match="unknown evaluation protocol"):
        build_model_card(reference_config(), facts=facts, metrics={"val": {"miou": 1.0}}, protocol="strict")
    no_metrics = build_model_card(reference_config(), facts=facts)
    assert "model-index" not in front_matter(no_metrics) and front_matter(no_metrics)["license"] == "apache-2.0"


class FakeHfApi:
    """Records what push_to_hub asks of huggingface_hub, and what the uploaded folder holds at upload time."""

    calls: list[tuple[str, dict]] = []
    uploaded: dict[str, bytes] = {}

    def __init__(self, token: str | None = None) -> None:
        self.calls.append(("init", {"token": token}))

    def create_repo(self, repo_id: str, **kwargs: object) -> str:
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return f"https://huggingface.co/{repo_id}"

    def create_branch(self, repo_id: str, **kwargs: object) -> None:
        self.calls.append(("create_branch", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self, **kwargs: object) -> object:
        self.calls.append(("upload_folder", kwargs))
        folder = Path(str(kwargs["folder_path"]))
        type(self).uploaded = {
            p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
        }

        class Commit:
            commit_url = f"https://huggingface.co/{kwargs['repo_id']}/commit/abc"
            pr_url = None

        return Commit()


def test_push_to_hub_uploads_a_save_pretrained_folder(tiny_bert_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    FakeHfApi.calls, FakeHfApi.uploaded = [], {}
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    model = DITSam(tiny_config(tiny_bert_dir))

    url = model.push_to_hub(
        "me/tiny-ldit", private=True, token="hf_test", revision="v1", metrics=METRICS, training_data="refcoco"
    )

    assert url == "https://huggingface.co/me/tiny-ldit/commit/abc"
    names = [name for name, _ in FakeHfApi.calls]
    assert names == ["init", "create_repo", "create_branch", "upload_folder"]
    assert FakeHfApi.calls[0][1] == {"token": "hf_test"}
    assert FakeHfApi.calls[1][1] == {"repo_id": "me/tiny-ldit", "private": True, "exist_ok": True, "repo_type": "model"}
    upload = FakeHfApi.calls[3][1]
    assert (upload["repo_id"], upload["revision"], upload["repo_type"], upload["create_pr"]) == (
        "me/tiny-ldit",
        "v1",
        "model",
        False,
    )
    assert not Path(str(upload["folder_path"])).exists(), "the temporary folder is removed after the upload"
    files = FakeHfApi.uploaded
    assert {CONFIG_FILE, WEIGHTS_FILE, CARD_FILE, f"{TEXT_DIR}/config.json"} <= set(files)
    card = files[CARD_FILE].decode("utf-8")
    assert 'Segmenter.from_pretrained("me/tiny-ldit")' in card and "| val | 72.3" in card
