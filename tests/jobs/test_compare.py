"""``recist-seg compare`` / ``jobs.compare``: the Evaluate dock's model comparison, headless."""

from __future__ import annotations

import csv
import io
import json

import pytest

from napari_recist_seg.cli import main
from napari_recist_seg.jobs.compare import ALL_KEYS, run_compare

STEMS = ["ISIC_0000000", "ISIC_0000001", "ISIC_0000002"]


@pytest.fixture()
def dataset(tmp_path, make_isic_dataset):
    return make_isic_dataset(tmp_path / "ds", STEMS)


def test_cli_compares_two_models_case_by_case(dataset, tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["compare", str(dataset), "--model", str(tiny_ckpt), "--model", str(tiny_ckpt),
                 "--out", str(out), "--derive", "--device", "cpu", "--quiet"])
    assert code == 0
    stdout = capsys.readouterr().out
    assert "A: 3 cases" in stdout and "B: 3 cases" in stdout
    result = json.loads((out / "compare.json").read_text())
    assert set(result["models"]) == {"A", "B"}
    assert result["difference"]["of"] == "B - A"
    diffs = result["difference"]["cases"]
    assert sorted(d["case"] for d in diffs) == STEMS
    # The same checkpoint twice: every per-case difference is exactly zero.
    for d in diffs:
        assert all(d[k] == 0.0 for k in ("dice", "iou", "hd", "avd", "centre_error")), d
    rows = list(csv.DictReader(io.StringIO((out / "compare.csv").read_text())))
    assert [r["model"] for r in rows] == ["A"] * 3 + ["B"] * 3 + ["B - A"] * 3
    assert list(rows[0])[2:2 + len(ALL_KEYS)] == list(ALL_KEYS)
    assert sorted(p.name for p in (out / "pred_A").glob("*_mask.png")) == \
        sorted(p.name for p in (out / "pred_B").glob("*_mask.png"))


def test_one_model_gives_the_evaluate_json(dataset, tiny_ckpt, tmp_path):
    out = tmp_path / "out"
    run = run_compare(dataset, out, [("A", tiny_ckpt, out / "pred_A")], derive=True, device="cpu")
    # One model: exactly what ``recist-seg evaluate --json`` writes (same keys, 3 cases).
    assert set(run.to_dict()) == set(run.runs[0].evaluation.to_dict())
    assert len(run.runs[0].evaluation.cases) == 3
    assert run.differences() == []


def test_the_dock_shows_the_same_keys():
    from napari_recist_seg._widgets import evaluate

    assert evaluate.ALL_KEYS == ALL_KEYS
    assert evaluate.EvaluationRun.__module__ == "napari_recist_seg.jobs.compare"


def test_more_than_two_models_is_a_clear_input_error(dataset, tmp_path, capsys):
    code = main(["compare", str(dataset), "--model", "a", "--model", "b", "--model", "c",
                 "--out", str(tmp_path / "o")])
    assert code == 2
    assert "one or two --model" in capsys.readouterr().err
