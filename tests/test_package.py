"""What makes the package one to trust: one version source, the licence files, the citation, the changelog,
and the versions every saved folder records."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

import ditsam
from ditsam.cli.main import main
from ditsam.model.dit import DITSam
from ditsam.versions import software_versions

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11; the package itself supports 3.10
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_version_has_one_source() -> None:
    project = _pyproject()
    assert "version" not in project["project"] and project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "ditsam.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", ditsam.__version__)


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out.strip() == f"ditsam {ditsam.__version__}"


def test_licence_is_an_spdx_expression_with_its_files() -> None:
    project = _pyproject()
    assert project["project"]["license"] == "Apache-2.0"
    assert project["project"]["license-files"] == ["LICENSE", "NOTICE"]
    assert any(
        re.fullmatch(r"setuptools>=(\d+)", r) and int(r.split(">=")[1]) >= 77
        for r in project["build-system"]["requires"]
    )
    licence = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    assert "END OF TERMS AND CONDITIONS" in licence  # the full text, not a pointer to it
    notice = (ROOT / "NOTICE").read_text(encoding="utf-8")
    for named in ("Segment Anything", "2404.00650", "wysnzzzz/DIT", "BERT"):
        assert named in notice


def test_citation_prefers_the_paper() -> None:
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert citation["cff-version"] == "1.2.0" and citation["type"] == "software"
    paper = citation["preferred-citation"]
    assert paper["title"] == "Deep Instruction Tuning for Segment Anything Model" and paper["year"] == 2024
    assert [a["family-names"] for a in paper["authors"]] == ["Huang", "Luo", "Zhu", "Tong", "Zhou", "Sun", "Ji"]
    assert "version" not in citation, "the version has one source: ditsam.__version__"


def test_changelog_names_the_current_version() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    releases = re.findall(r"^## \[([^\]]+)\]", changelog, flags=re.MULTILINE)
    assert releases[0] == "Unreleased" and releases[1] == ditsam.__version__


def test_saved_folder_records_versions_and_old_folders_still_load(checkpoint: Path, tmp_path: Path) -> None:
    payload = json.loads((checkpoint / "config.json").read_text())
    assert payload["versions"] == software_versions() and set(payload["versions"]) == {"ditsam", "torch"}
    old = shutil.copytree(checkpoint, tmp_path / "old")
    del payload["versions"]
    (old / "config.json").write_text(json.dumps(payload))
    DITSam.from_pretrained(old)
