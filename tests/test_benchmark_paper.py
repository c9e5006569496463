"""benchmarks/refshapes_paper.py and its paper_tables.py: every row names a run whose experiment loads, the
claims are judged right on hand-made scores, stored runs are reused."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from ditsam.engine.config import load_experiment

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture()
def paper(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("refshapes_paper")


@pytest.fixture()
def tables(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("paper_tables")


def test_every_row_and_claim_names_a_run_that_loads(paper, tables) -> None:
    for _, rows in tables.TABLES.values():
        for _, key, prompt in rows:
            run = tables.RUNS[key]
            if run is None:
                assert prompt in ("points", "box")
                continue
            assert prompt in run.prompts
            config = load_experiment(run.experiment, dict(run.overrides))
            assert config.train.init_checkpoint == paper.TINY_SAM
    for claim in tables.CLAIMS:
        assert claim.table in tables.TABLES
        for key, _ in (*claim.plus, *claim.minus):
            assert key in tables.RUNS


def test_a_claim_holds_by_its_per_seed_differences(tables) -> None:
    claim = tables.Claim("1", "a > b", (("a", "text"),), (("b", "text"),))
    verdict = tables.judge(claim, {("a", "text"): [60.0, 62.0, 64.0], ("b", "text"): [59.0, 60.0, 61.0]})
    # differences 1, 2, 3: mean 2, sample std 1
    assert verdict["verdict"] == "holds" and verdict["difference"] == pytest.approx(2.0)
    assert verdict["margin_in_std"] == pytest.approx(2.0) and verdict["seeds"] == 3
    against = tables.judge(claim, {("a", "text"): [50.0, 50.0], ("b", "text"): [51.0, 53.0]})
    assert against["verdict"] == "does not hold" and against["margin_in_std"] == pytest.approx(-2.0 / 2**0.5 * 1)
    assert tables.judge(claim, {("a", "text"): [1.0]})["verdict"] == "not measured"


def test_a_single_valued_row_serves_every_seed(tables) -> None:
    claim = tables.Claim("4", "mix > sam", (("mix", "box"),), (("sam", "box"),))
    verdict = tables.judge(claim, {("mix", "box"): [80.0, 82.0], ("sam", "box"): [79.0]})
    assert verdict["difference"] == pytest.approx(2.0) and verdict["seeds"] == 2


def test_a_difference_of_differences(tables) -> None:
    claim = next(c for c in tables.CLAIMS if "larger with the encoder frozen" in c.text)
    scores = {
        ("ldit", "text"): [70.0],
        ("default", "text"): [60.0],
        ("ldit_frozen", "text"): [65.0],
        ("default_frozen", "text"): [45.0],
    }
    verdict = tables.judge(claim, scores)
    assert verdict["difference"] == pytest.approx(10.0) and verdict["margin_in_std"] is None


def test_the_markdown_shows_rows_and_verdicts(tables) -> None:
    split = {"miou": 61.0, "oiou": 60.0, "p@0.5": 70.0}
    result = {
        "train_seconds": 100.0,
        "scores": {"text": {"val": split, "testA": split, "testB": split}},
        "ms_per_sentence": {"text": 3.0},
    }
    results = {"ldit": [result, result], "crossatt": [result]}
    verdicts = [tables.judge(c, tables.collect_scores(results)) for c in tables.CLAIMS if c.table == "3"]
    text = tables.markdown(results, ["3"], verdicts)
    assert (
        "| Linear projection | 2 | 61.0 ± 0.0 | 61.0 ± 0.0 | 61.0 ± 0.0 | 70.0 ± 0.0 | - | 100.0 ± 0.0 | 3.0 ± 0.0 |"
        in text
    )
    # The last epoch's training loss, of the runs that recorded it (runs stored before it was kept have none).
    losses = {"ldit": [{**result, "last_epoch_loss": 0.5}, {**result, "last_epoch_loss": 0.7}], "crossatt": [result]}
    assert "| 70.0 ± 0.0 | 0.60 ± 0.14 | 100.0 ± 0.0 |" in tables.markdown(losses, ["3"], verdicts)
    losses["ldit"][1] = result
    assert "| 70.0 ± 0.0 | 0.50 (1 of 2) | 100.0 ± 0.0 |" in tables.markdown(losses, ["3"], verdicts)
    assert "| CrossAtt + FFN | 0 | - |" in text
    assert "| linear projection beats CrossAtt + FFN | not measured |" in text
    assert "| linear projection beats CrossAtt | **does not hold** | +0.00 | n/a (1 seed) |" in text

    def scored(miou: float, seed: int) -> dict:
        values = {"miou": miou, "oiou": miou, "p@0.5": miou}
        return {**result, "seed": seed, "scores": {"text": {"val": values, "testA": values, "testB": values}}}

    two_seeds = {"ldit": [scored(60.0, 0), scored(62.0, 1)], "crossatt": [scored(59.0, 0), scored(60.0, 1)]}
    # differences 1 and 2: mean 1.5, sample std 0.71, margin 2.1
    paired = [tables.judge(c, tables.collect_scores(two_seeds)) for c in tables.CLAIMS if c.table == "3"]
    assert "| linear projection beats CrossAtt | **holds** | +1.50 | +2.1 std (2 seeds) |" in tables.markdown(
        two_seeds, ["3"], paired
    )
    # Times from one sitting replace each run's own; a row the sitting did not time keeps its runs' times.
    retimed = tables.markdown(results, ["3"], verdicts, {"ldit": {"text": 2.5}})
    assert (
        "| 100.0 ± 0.0 | 2.5 |" in retimed
        and "| CrossAtt | 1 | 61.0 | 61.0 | 61.0 | 70.0 | - | 100.0 | 3.0 |" in retimed
    )


def test_the_report_replaces_only_what_stands_between_the_readme_markers(tables) -> None:
    document = f"# Benchmarks\nprose before\n{tables.README_BEGIN}\nold table\n{tables.README_END}\nprose after\n"
    spliced = tables.splice(document, "### new table\n")
    assert (
        spliced
        == f"# Benchmarks\nprose before\n{tables.README_BEGIN}\n### new table\n{tables.README_END}\nprose after\n"
    )
    assert tables.splice(spliced, "### new table") == spliced
    for broken in (document.replace(tables.README_END, ""), document + tables.README_BEGIN + "\n"):
        with pytest.raises(ValueError, match="once"):
            tables.splice(broken, "x")


def test_claims_pair_the_seeds_both_sides_have(tables) -> None:
    claim = tables.Claim("1", "a > b", (("a", "text"),), (("b", "text"),))
    verdict = tables.judge(claim, {("a", "text"): {0: 60.0, 2: 64.0}, ("b", "text"): {0: 59.0, 1: 99.0, 2: 61.0}})
    # seed 1 of b has no partner: differences 1 (seed 0) and 3 (seed 2)
    assert verdict["seeds"] == 2 and verdict["difference"] == pytest.approx(2.0)
    untuned = tables.judge(claim, {("a", "text"): {1: 62.0, 2: 64.0}, ("b", "text"): {None: 60.0}})
    assert untuned["seeds"] == 2 and untuned["difference"] == pytest.approx(3.0)


def test_a_run_finished_in_the_store_is_reused_not_trained(paper, tables, tmp_path: Path, monkeypatch) -> None:
    import argparse
    import json

    args = argparse.Namespace(runs=str(tmp_path / "runs"), store=str(tmp_path / "store"), common={"data.root": "d"})
    run = tables.RUNS["ldit"]
    stored = {"experiment": run.experiment, "overrides": {"data.root": "d", "train.seed": 1}, "scores": {}}
    (tmp_path / "store" / "ldit").mkdir(parents=True)
    (tmp_path / "store" / "ldit" / "seed1.json").write_text(json.dumps(stored))

    def no_training(*args, **kwargs):
        raise AssertionError("trained a run the store holds")

    monkeypatch.setattr("ditsam.engine.train.train", no_training)
    assert paper._train_and_score("ldit", run, 1, args) == stored
    args.common = {"data.root": "elsewhere"}
    with pytest.raises(SystemExit, match="has other settings"):
        paper._train_and_score("ldit", run, 1, args)
    assert paper._finished("ldit", 0, args) is None


def test_retime_builds_each_rows_model_from_its_recipe_and_times_its_prompts(
    paper, refshapes_root: Path, monkeypatch
) -> None:
    import argparse

    monkeypatch.setattr(paper, "TIMED_SAMPLES", 1)
    data = {"data.root": str(refshapes_root), "data.refshapes_preset": "tiny", "data.refshapes_seed": 3}
    args = argparse.Namespace(data=str(refshapes_root), common=data)
    timing = paper.retime(["sam", "mix"], args)
    assert set(timing["ms_per_sentence"]) == {"sam", "mix"}
    assert set(timing["ms_per_sentence"]["sam"]) == {"points", "box"}
    assert set(timing["ms_per_sentence"]["mix"]) == {"text", "points", "box"}
    assert all(ms > 0 for row in timing["ms_per_sentence"].values() for ms in row.values())
    assert timing["timed_samples"] == 1 and timing["machine"]["cpu_model"]


def test_report_only_writes_the_tables_into_the_readme_and_refuses_one_without_markers(
    paper, tables, tmp_path: Path, monkeypatch
) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{tables.README_BEGIN}\n{tables.README_END}\nkept\n")
    where = ["--store", str(tmp_path / "store"), "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out/r")]
    monkeypatch.setattr("sys.argv", ["refshapes_paper.py", "--report-only", *where, "--readme", str(readme)])
    paper.main()
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith(f"{tables.README_END}\nkept\n")
    assert "### Table 1: where the text enters" in text and "| L-DIT > E-DIT | not measured |" in text
    assert (tmp_path / "out" / "r.png").is_file() and (tmp_path / "out" / "r.md").is_file()
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit, match=f"--readme {readme}: needs the line"):
        paper.main()
    assert readme.read_text() == "no markers\n"


def test_the_picture_puts_each_seed_at_its_score(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    plot = importlib.import_module("paper_plot")
    scores = {("ldit", "text"): {0: 50.0, 1: 70.0}, ("sam", "points"): {None: 90.0}}
    image = plot.draw_seeds(scores, ["1", "4"])
    pixels, rows_end = image.load(), image.height - plot.AXIS_HEIGHT  # the legend below repeats the seed colours

    def columns(colour: tuple[int, int, int]) -> set[int]:
        return {x for x in range(image.width) for y in range(rows_end) if pixels[x, y] == colour}

    for colour, score in ((plot.SEED_COLOURS[0], 50.0), (plot.SEED_COLOURS[1], 70.0), (plot.UNSEEDED_COLOUR, 90.0)):
        found = columns(colour)
        assert found and all(abs(x - plot.x_of(score)) <= plot.DOT_RADIUS + 1 for x in found), (colour, score)
    assert not columns(plot.SEED_COLOURS[2])
    # A run on the plateau is a ring: its colour around, not at its centre.
    ringed = plot.draw_seeds(scores, ["1", "4"], plateau=frozenset({("ldit", 0)}))
    ring_pixels = ringed.load()
    ring = [(x, y) for x in range(ringed.width) for y in range(rows_end) if ring_pixels[x, y] == plot.SEED_COLOURS[0]]
    centre = (round(sum(x for x, _ in ring) / len(ring)), round(sum(y for _, y in ring) / len(ring)))
    assert ring and ring_pixels[centre] != plot.SEED_COLOURS[0] and pixels[centre] == plot.SEED_COLOURS[0]
    assert [title for title, _ in plot.plotted_rows(["1", "2"])][1].startswith("Table 2")
    assert all(key not in ("edit", "ldit") for _, rows in plot.plotted_rows(["1", "2"])[1:] for _, key, _ in rows)


def test_the_last_epochs_loss_is_the_mean_of_its_logged_losses(paper, tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    assert paper.last_epoch_loss(metrics) is None
    records = [
        {"step": 10, "epoch": 0, "train/loss": 1.0, "train/lr": 1e-4},
        {"step": 20, "epoch": 1, "train/loss": 0.75, "train/lr": 1e-4},
        {"step": 20, "epoch": 1, "split": "val", "val/miou": 30.0},
        {"step": 30, "epoch": 1, "train/loss": 0.65, "train/lr": 1e-4},
    ]
    metrics.write_text("".join(json.dumps(record) + "\n" for record in records))
    assert paper.last_epoch_loss(metrics) == pytest.approx(0.70)
    metrics.write_text(json.dumps(records[2]) + "\n")
    assert paper.last_epoch_loss(metrics) is None


def test_runs_whose_last_epoch_loss_stayed_high_are_on_the_plateau(tables) -> None:
    high, low = tables.PLATEAU_LOSS, tables.PLATEAU_LOSS - 0.01
    results = {
        "ldit": [{"seed": 0, "last_epoch_loss": high}, {"seed": 1, "last_epoch_loss": low}],
        "edit": [{"seed": 0}],  # stored before the loss was kept
        "sam": [{"seed": None}],
    }
    assert tables.on_plateau(results) == {("ldit", 0)}
