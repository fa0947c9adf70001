"""Hand-written mutation testing: does the suite fail for plausible bugs?

Each mutant is one small string replacement in a core or jobs module (a bug someone
could plausibly write). It is applied alone to a temporary copy of the repository
(``<tmp>/repo``, with ``<tmp>/shared`` linked to the real ``../shared`` so the tests
find the data), and the test files chosen for it are run. A mutant is *caught* when
pytest fails. Prints one JSON document: per mutant caught / survived / invalid (its
text is not found exactly once: the code moved, update the list), and the score.

Usage (from the repository root; ~15-25 min for all on 2 busy cores)::

    nice -n 10 python3 benchmarks/mutants.py                 # all mutants
    nice -n 10 python3 benchmarks/mutants.py --only tta dice2  # some, by name
    python3 benchmarks/mutants.py --list
    python3 benchmarks/mutants.py --tests-from main  # main's tests (score before)

``--tests-from REF`` replaces ``tests/`` in the copy by that git ref's (to compare
the suite of a branch with main's on the same mutants).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
P = "napari_recist_seg/"

T_PRE = ["tests/test_preprocess.py"]
T_PRED = ["tests/test_predict.py"]
T_SEG = ["tests/jobs/test_segment.py"]
T_TRAIN = ["tests/test_training.py"]
T_REC = ["tests/test_recist.py"]
T_MET = ["tests/test_metrics.py"]
T_TGT = ["tests/test_targets.py"]
T_DATA = ["tests/data"]
T_EVAL = ["tests/jobs/test_evaluate.py"]


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


def _m(name, path, old, new, tests) -> Mutant:
    return Mutant(name, P + path, old, new, tuple(tests))


MUTANTS = [
    # -- the bugs named in issue 16 ---------------------------------------------------
    _m("crop_offset_no_half_pixel", "preprocess.py",
       "return (self.row0 - 0.5 + 0.5 / s, self.col0 - 0.5 + 0.5 / s)",
       "return (float(self.row0), float(self.col0))", T_PRE),
    # (``logits`` itself is turned into ``prob`` in place, so compare the logit explicitly)
    _m("threshold_logits", "predict.py", "mask = prob > self.threshold",
       "mask = np.log(prob / (1 - prob)) > self.threshold", T_PRED),
    _m("tta_unflip_wrong_axis", "tta.py", "_flip(np.asarray(seg, np.float32), r, c, 1)",
       "_flip(np.asarray(seg, np.float32), c, r, 1)", T_PRED),
    # (spacing=None alone is an equivalent mutant for NIfTI inputs: the affine carries it.)
    _m("segment_mask_affine_none", "jobs/segment_commit.py",
       "write_mask(mask_path, union > 0, spacing=out_spacing, affine=out_affine)",
       "write_mask(mask_path, union > 0, spacing=out_spacing, affine=None)", T_SEG),
    _m("train_gt_leak_without_curated", "jobs/train.py",
       "curated_mask=curated_masks.get(stem),",
       "curated_mask=curated_masks.get(stem, masks.get(stem)),", T_TRAIN),
    _m("dice_loss_no_factor_2", "training/losses.py",
       "dice = 1.0 - (2.0 * inter + 1.0) / (denom + 1.0)",
       "dice = 1.0 - (inter + 1.0) / (denom + 1.0)", T_TRAIN),
    _m("volume_paste_z_minus_1", "jobs/segment_commit.py", "res.paste_into(target[z], value)",
       "res.paste_into(target[z - 1], value)", T_SEG),
    _m("crop_centre_row_col_flip", "preprocess.py", "return CropBox(row0, col0, side)",
       "return CropBox(col0, row0, side)", T_PRE),
    # -- fresh ones: preprocess ---------------------------------------------------------
    _m("crop_side_short_axis", "preprocess.py",
       "int(round(float(cfg.crop_factor) * recist.long_length))",
       "int(round(float(cfg.crop_factor) * recist.short_length))", T_PRE),
    _m("crop_box_no_centring_half", "preprocess.py",
       "row0 = int(math.floor(centre[0] - (side - 1) / 2.0 + 0.5))",
       "row0 = int(math.floor(centre[0] - side / 2.0))", T_PRE),
    _m("paste_back_swapped_start", "preprocess.py",
       "r0, c0 = rs.start - box.row0, cs.start - box.col0",
       "r0, c0 = cs.start - box.col0, rs.start - box.row0", T_PRE),
    _m("ct_window_not_centred", "preprocess.py",
       "x = (x - (float(level) - float(width) / 2.0)) / float(width)",
       "x = (x - float(level)) / float(width)", T_PRE),
    _m("to_image_wrong_scale", "preprocess.py",
       "return pts / self.scale(size) + np.asarray(self.crop_offset(size))",
       "return pts * self.scale(size) + np.asarray(self.crop_offset(size))", T_PRE),
    _m("clipped_off_by_one", "preprocess.py",
       "r1, c1 = min(self.row0 + self.side, h), min(self.col0 + self.side, w)",
       "r1, c1 = min(self.row0 + self.side, h - 1), min(self.col0 + self.side, w - 1)", T_PRE),
    # -- predict ------------------------------------------------------------------------
    _m("tta_aux_not_averaged", "tta.py",
       "aux_mean = None if aux[0] is None else sum(np.asarray(a) for a in aux) / len(flips)",
       "aux_mean = aux[-1]", T_PRED),
    _m("tta_big_batch_views_unflipped", "tta.py", "outs = [runner(_flip(x, r, c, 2)) for r, c in flips]",
       "outs = [runner(x) for r, c in flips]", T_PRED),
    _m("lesion_plane_z_minus_1", "postprocess.py", "return target[self.recist.slice_index]",
       "return target[self.recist.slice_index - 1]", T_PRED),
    _m("measure_mask_no_shift", "postprocess.py", "shift = (offset[0] + r0, offset[1] + c0)",
       "shift = (offset[0], offset[1])", T_PRED),
    _m("paste_into_ignores_mask", "postprocess.py", "plane[rs, cs][self.mask] = value",
       "plane[rs, cs] = value", T_PRED),
    _m("area_counts_box", "postprocess.py", "return int(np.count_nonzero(self.mask))",
       "return int(self.mask.size)", T_PRED),
    # -- jobs/segment ---------------------------------------------------------------------
    _m("segment_labels_affine_none", "jobs/segment_commit.py",
       "write_labels(labels_path, labels, spacing=out_spacing, affine=out_affine)",
       "write_labels(labels_path, labels, spacing=out_spacing, affine=None)", T_SEG),
    _m("segment_labels_all_one", "jobs/segment_commit.py", "_paste(res, labels, value, volume)",
       "_paste(res, labels, 1, volume)", T_SEG),
    _m("segment_zero_ids_kept", "jobs/segment_commit.py",
       "if min(ids) < 1 or (not volume and max(ids) > 65535):",
       "if not volume and max(ids) > 65535:", T_SEG),
    _m("segment_area_mm2_one_axis", "measurements.py",
       "area_mm2 = area_px * spacing[0] * spacing[1] if",
       "area_mm2 = area_px * spacing[0] * spacing[0] if", T_SEG),
    # -- training -------------------------------------------------------------------------
    _m("seg_loss_no_bce", "training/losses.py", "return bce + dice.mean()", "return dice.mean()", T_TRAIN),
    _m("prepare_gt_as_curated", "training/samples.py",
       'curated = _mask_plane(sample.curated_mask, recist, shape, "curated mask")',
       'curated = _mask_plane(sample.curated_mask if sample.curated_mask is not None '
       'else sample.gt_mask, recist, shape, "curated mask")', T_TRAIN),
    _m("n_curated_counts_all", "training/checkpoint.py",
       '"n_curated": int(sum(p.curated for p in prepared)),',
       '"n_curated": 0,', T_TRAIN),
    _m("val_dice_np_no_factor_2", "training/losses.py",
       "return 2.0 * int(np.logical_and(pred, ref).sum()) / s",
       "return int(np.logical_and(pred, ref).sum()) / s", T_TRAIN),
    _m("curated_needs_init_check_dropped", "jobs/train.py",
       "if curated is not None and init is None:", "if False:", T_TRAIN),
    # -- recist -----------------------------------------------------------------------------
    _m("long_length_short_axis", "recist.py",
       "return float(np.linalg.norm(self.long_axis[1] - self.long_axis[0]))",
       "return float(np.linalg.norm(self.short_axis[1] - self.short_axis[0]))", T_REC),
    _m("length_mm_spacing_swapped", "recist.py",
       "d = (seg[1] - seg[0]) * np.asarray(self.spacing)",
       "d = (seg[1] - seg[0]) * np.asarray(self.spacing)[::-1]", T_REC),
    _m("length_mm_no_hypot", "recist.py", "return float(np.hypot(d[0], d[1]))",
       "return float(abs(d[0]) + abs(d[1]))", T_REC),
    # -- metrics ----------------------------------------------------------------------------
    _m("metric_dice_no_factor_2", "metrics.py",
       "return 2.0 * int(np.count_nonzero(p & g)) / total",
       "return int(np.count_nonzero(p & g)) / total", T_MET),
    _m("metric_iou_empty_zero", "metrics.py",
       "    union = int(np.count_nonzero(p | g))\n    if union == 0:\n        return 1.0",
       "    union = int(np.count_nonzero(p | g))\n    if union == 0:\n        return 0.0", T_MET),
    _m("metric_vs_no_abs", "metrics.py", "return 1.0 - abs(a - b) / (a + b)",
       "return 1.0 - (a - b) / (a + b)", T_MET),
    # -- targets ----------------------------------------------------------------------------
    _m("ellipse_strict_inside", "ellipse.py", "inside = _rho_in_box(frame, box) <= 1.0 + 1e-9",
       "inside = _rho_in_box(frame, box) < 0.9", T_TGT),
    _m("ellipse_paste_swapped", "ellipse.py",
       "out[r0 : r0 + crop.shape[0], c0 : c0 + crop.shape[1]] = crop",
       "out[c0 : c0 + crop.shape[0], r0 : r0 + crop.shape[1]] = crop", T_TGT),
    # -- data readers -------------------------------------------------------------------------
    _m("nifti_mask_axes", "data/masks.py", "    out = data.transpose(2, 1, 0)\n    return out[0]",
       "    out = data.transpose(2, 0, 1)\n    return out[0]", T_DATA),
    _m("nifti_2d_mask_not_transposed", "data/masks.py", "        return data.T\n",
       "        return data\n", T_DATA),
    _m("nifti_image_axes", "data/nifti.py",
       "arr = np.ascontiguousarray(data.transpose(2, 1, 0))",
       "arr = np.ascontiguousarray(data.transpose(2, 0, 1))", T_DATA),
]


def _copy_repo(dst: Path, tests_from: str | None) -> Path:
    repo = dst / "repo"
    ignore = shutil.ignore_patterns(".git", "__pycache__", "*.pyc", ".pytest_cache", "*.egg-info")
    shutil.copytree(ROOT, repo, ignore=ignore, symlinks=True)
    shared = ROOT.parent / "shared"
    if shared.exists():
        (dst / "shared").symlink_to(shared.resolve())
    if tests_from:
        shutil.rmtree(repo / "tests")
        files = subprocess.run(["git", "ls-tree", "-r", "--name-only", tests_from, "tests"],
                               cwd=ROOT, check=True, capture_output=True, text=True).stdout.split()
        for f in files:
            blob = subprocess.run(["git", "show", f"{tests_from}:{f}"], cwd=ROOT, check=True,
                                  capture_output=True).stdout
            (repo / f).parent.mkdir(parents=True, exist_ok=True)
            (repo / f).write_bytes(blob)
    return repo


def _prebuild_test_model(repo: Path, out: Path) -> None:
    """Train the suite's small test checkpoint once, with the unmutated code, and hand
    it to every run (``RECIST_SEG_TEST_MODEL``) instead of retraining per mutant."""
    conftest = repo / "tests" / "conftest.py"
    if "_train_small_checkpoint" not in conftest.read_text(encoding="utf-8"):
        return  # an older suite without the trained fixture
    code = ("import importlib.util as u, sys; from pathlib import Path; "
            f"s = u.spec_from_file_location('c', {str(conftest)!r}); m = u.module_from_spec(s); "
            f"s.loader.exec_module(m); m._train_small_checkpoint(Path({str(out)!r}))")
    subprocess.run([sys.executable, "-c", code], cwd=repo, check=True, capture_output=True)
    os.environ["RECIST_SEG_TEST_MODEL"] = str(out)


def _pytest(repo: Path, tests: tuple[str, ...], timeout: float) -> tuple[int, float]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    if shutil.which("xvfb-run"):
        cmd = ["xvfb-run", "-a", *cmd]
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    t0 = time.perf_counter()
    try:
        rc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        rc = -1  # a hang counts as caught (the suite would not pass)
    return rc, time.perf_counter() - t0


def run(mutants: list[Mutant], tests_from: str | None, timeout: float) -> dict:
    results = []
    with tempfile.TemporaryDirectory(prefix="mutants_") as tmp:
        repo = _copy_repo(Path(tmp), tests_from)
        _prebuild_test_model(repo, Path(tmp) / "test_model")
        for m in mutants:
            target = repo / m.path
            original = target.read_text(encoding="utf-8")
            if original.count(m.old) != 1:
                results.append({"name": m.name, "file": m.path, "status": "invalid",
                                "reason": f"text found {original.count(m.old)} times"})
                continue
            target.write_text(original.replace(m.old, m.new), encoding="utf-8")
            try:
                rc, dt = _pytest(repo, m.tests, timeout)
            finally:
                target.write_text(original, encoding="utf-8")
            status = "survived" if rc == 0 else "caught"
            if rc in (2, 3, 4):  # collection / internal / usage error: still a failed run
                status = "caught"
            results.append({"name": m.name, "file": m.path, "tests": list(m.tests),
                            "status": status, "pytest_rc": rc, "seconds": round(dt, 1)})
            print(f"{m.name}: {status} ({dt:.0f} s)", file=sys.stderr, flush=True)
    valid = [r for r in results if r["status"] != "invalid"]
    caught = sum(r["status"] == "caught" for r in valid)
    return {
        "tests_from": tests_from or "working tree",
        "n_mutants": len(valid),
        "n_caught": caught,
        "score": round(caught / len(valid), 4) if valid else None,
        "survived": [r["name"] for r in valid if r["status"] == "survived"],
        "invalid": [r["name"] for r in results if r["status"] == "invalid"],
        "mutants": results,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="*", help="mutant names (default: all)")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--tests-from", help="git ref whose tests/ to run (e.g. main)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per mutant")
    a = ap.parse_args(argv)
    if a.list:
        for m in MUTANTS:
            print(f"{m.name:36s} {m.path:34s} {' '.join(m.tests)}")
        return 0
    chosen = MUTANTS
    if a.only:
        unknown = set(a.only) - {m.name for m in MUTANTS}
        if unknown:
            print(f"unknown mutant(s): {', '.join(sorted(unknown))}", file=sys.stderr)
            return 2
        chosen = [m for m in MUTANTS if m.name in a.only]
    print(json.dumps(run(chosen, a.tests_from, a.timeout), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
