"""Training cost of A1 vs A1+L: epochs and time to the best validation Dice, and to A1's best.

Chu et al. (MIDL 2021) claim the auxiliary RECIST-cluster task cuts training time by up
to 75%. For every seed that has both an ``a1_sN`` and an ``a1l_sN`` run (written by
``accuracy.py --out DIR``), this reads the two ``train_log.json`` files and reports:

- ``best``: epoch, training time and validation Dice of each model's best epoch
  (validation Dice against the weak target: the model-selection criterion);
- ``to_a1_best``: the first epoch (and time) at which A1+L's validation Dice reaches
  A1's best validation Dice (``null``: never within the run) and the ratio to A1's own
  time to its best (the paper's "75% less" would be a ratio of 0.25);
- the same two on ``val_gt_dice`` (Dice of the validation predictions against the
  expert masks; reporting only, never used for selection);
- ``s_per_epoch``: the mean epoch time of each model (the cost of the extra head).

Times: ``train_s`` sums the epochs' own times (training + validation, no data
preparation); ``elapsed_s`` is from the start of ``train()`` (includes preparing the
weak targets). Wall times on a shared machine are inflated by other processes; the
epoch counts are the load-independent figure.

Run from the repository root::

    python benchmarks/training_time.py --out /tmp/acc            # read existing runs
    python benchmarks/training_time.py --out /tmp/acc -- --seeds 0 1 2 --epochs 6
        # runs accuracy.py with the arguments after "--" first if runs are missing

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _curve(doc: dict, key: str) -> list[tuple[int, float, float, float]]:
    """(epoch, value, cumulative epoch time, elapsed) per epoch with a value."""
    out, cum = [], 0.0
    for e in doc["epochs"]:
        cum += float(e["epoch_time_s"])
        if e.get(key) is not None:
            out.append((int(e["epoch"]), float(e[key]), cum, float(e["elapsed_s"])))
    return out


def _best(curve: list) -> dict[str, Any] | None:
    if not curve:
        return None
    # The first epoch reaching the maximum, as train() selects it.
    i = int(np.argmax([c[1] for c in curve]))
    ep, v, cum, el = curve[i]
    return {"epoch": ep, "value": v, "train_s": cum, "elapsed_s": el}


def _first_reaching(curve: list, level: float) -> dict[str, Any] | None:
    for ep, v, cum, el in curve:
        if v >= level - 1e-9:
            return {"epoch": ep, "value": v, "train_s": cum, "elapsed_s": el}
    return None


def compare(a1: dict, a1l: dict, key: str) -> dict[str, Any]:
    ca, cl = _curve(a1, key), _curve(a1l, key)
    ba, bl = _best(ca), _best(cl)
    out: dict[str, Any] = {"a1_best": ba, "a1l_best": bl}
    if ba is None or bl is None:
        return out
    reach = _first_reaching(cl, ba["value"])
    out["a1l_to_a1_best"] = reach
    if reach is not None:
        out["epoch_ratio_to_a1_best"] = reach["epoch"] / ba["epoch"]
        out["time_ratio_to_a1_best"] = reach["train_s"] / ba["train_s"]
    out["epoch_ratio_best"] = bl["epoch"] / ba["epoch"]
    out["time_ratio_best"] = bl["train_s"] / ba["train_s"]
    return out


def analyse(out_dir: Path) -> dict[str, Any]:
    runs: dict[tuple[str, int], dict] = {}
    for log in sorted(out_dir.glob("*_s*/train_log.json")):
        m = re.fullmatch(r"(a1|a1l)_s(\d+)", log.parent.name)
        if m:
            runs[(m.group(1), int(m.group(2)))] = json.loads(log.read_text())
    seeds = sorted({s for (_, s) in runs if ("a1", s) in runs and ("a1l", s) in runs})
    per_seed = {}
    for s in seeds:
        a1, a1l = runs[("a1", s)], runs[("a1l", s)]
        per_seed[s] = {
            "val_dice": compare(a1, a1l, "val_dice"),
            "val_gt_dice": compare(a1, a1l, "val_gt_dice"),
            "epochs_run": {"a1": len(a1["epochs"]), "a1l": len(a1l["epochs"])},
            "status": {"a1": a1.get("status"), "a1l": a1l.get("status")},
            "s_per_epoch": {
                "a1": float(np.mean([e["epoch_time_s"] for e in a1["epochs"]])) if a1["epochs"] else None,
                "a1l": float(np.mean([e["epoch_time_s"] for e in a1l["epochs"]])) if a1l["epochs"] else None,
            },
            "wall_time_s": {"a1": a1.get("wall_time_s"), "a1l": a1l.get("wall_time_s")},
        }
    summary: dict[str, Any] = {}
    for key in ("val_dice", "val_gt_dice"):
        rows = [per_seed[s][key] for s in seeds]
        reached = [r for r in rows if r.get("a1l_to_a1_best")]
        summary[key] = {
            "a1_best_epoch": [r["a1_best"]["epoch"] for r in rows if r.get("a1_best")],
            "a1l_best_epoch": [r["a1l_best"]["epoch"] for r in rows if r.get("a1l_best")],
            "a1l_epoch_reaching_a1_best": [
                (r["a1l_to_a1_best"] or {}).get("epoch") for r in rows],
            "seeds_where_a1l_reaches_a1_best": f"{len(reached)}/{len(rows)}",
            "mean_time_ratio_to_a1_best": (
                float(np.mean([r["time_ratio_to_a1_best"] for r in reached])) if reached else None),
            "mean_epoch_ratio_to_a1_best": (
                float(np.mean([r["epoch_ratio_to_a1_best"] for r in reached])) if reached else None),
        }
    spe = [per_seed[s]["s_per_epoch"] for s in seeds]
    if spe:
        summary["a1l_over_a1_s_per_epoch"] = float(np.mean([x["a1l"] / x["a1"] for x in spe]))
    cfg = runs[next(iter(runs))]["train_config"] if runs else {}
    return {
        "benchmark": "training_time",
        "runs_dir": str(out_dir),
        "seeds": seeds,
        "train_config_of_first_run": cfg,
        "summary": summary,
        "per_seed": {str(s): v for s, v in per_seed.items()},
        "note": ("ratio = A1+L time (or epochs) to reach A1's best validation Dice / A1's time to its "
                 "own best; the paper's 'up to 75% less training time' is a ratio of 0.25. "
                 "train_s sums epoch times (training + validation)."),
    }


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, passthrough = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="runs folder of accuracy.py")
    args = p.parse_args(argv)
    if passthrough or not list(args.out.glob("*_s*/train_log.json")):
        if not passthrough:
            print(f"no runs under {args.out}; pass accuracy.py arguments after '--' to train them",
                  file=sys.stderr)
            return 2
        import contextlib
        import io

        import accuracy

        with contextlib.redirect_stdout(io.StringIO()):
            accuracy.main(["--out", str(args.out), *passthrough])
    print(json.dumps(analyse(args.out), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
