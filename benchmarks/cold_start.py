"""Cold start of ``recist-seg segment`` on one image: wall time and peak RSS.

Each run is a fresh process (``python -m napari_recist_seg segment IMAGE --recist CSV
--out DIR``) timed from outside; peak RSS is the child's ``ru_maxrss``
(``resource.getrusage(RUSAGE_CHILDREN)`` after each run, which is the maximum over the
children so far: runs are made one child at a time, each from a fresh helper process,
so the figure is per run). Prints JSON: medians and all runs, whether torch was
imported (``-X importtime`` of one extra run), the load average before and after (the
machine is shared), and the targets (<= 2.5 s, <= 500 MB).

    python benchmarks/cold_start.py --runs 5
    python benchmarks/cold_start.py --model path/to/checkpoint   # an old checkpoint
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout, not an installed copy
DATA = REPO / ".." / "shared" / "data" / "isic2017_train256"
TARGET_WALL_S = 2.5
TARGET_RSS_MB = 500.0

# Runs one CLI process and reports its wall time and peak RSS (a fresh helper per run,
# so RUSAGE_CHILDREN holds this one child only).
_HELPER = r"""
import json, resource, subprocess, sys, time
t = time.perf_counter()
rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE).returncode
wall = time.perf_counter() - t
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": rc, "wall_s": wall, "peak_rss_mb": ru.ru_maxrss / 1024.0}))
"""


def _recist_csv(image: Path, mask: Path, out: Path) -> None:
    import numpy as np
    from PIL import Image

    from napari_recist_seg.data.recist_csv import RecistRecord, write_recist_csv
    from napari_recist_seg.recist import recist_from_mask

    r = recist_from_mask(np.asarray(Image.open(mask)) > 0)
    write_recist_csv(out, [RecistRecord(image, 1, r)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--image", default="ISIC_0000000")
    ap.add_argument("--model", default=None, help="checkpoint (default: the shipped model)")
    args = ap.parse_args()
    image = DATA / "images" / f"{args.image}.jpg"
    mask = DATA / "masks" / f"{args.image}_segmentation.png"
    if not image.is_file():
        sys.exit(f"cold_start: {image} not found")
    work = Path(tempfile.mkdtemp(prefix="cold_start_"))
    csv = work / "recist.csv"
    _recist_csv(image, mask, csv)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    load_before = os.getloadavg()
    runs = []
    for i in range(args.runs):
        cmd = [sys.executable, "-m", "napari_recist_seg", "segment", str(image),
               "--recist", str(csv), "--out", str(work / f"out{i}"), "--quiet"]
        if args.model:
            cmd += ["--model", args.model]
        res = subprocess.run([sys.executable, "-c", _HELPER, *cmd], capture_output=True,
                             text=True, env=env, cwd=REPO)
        runs.append(json.loads(res.stdout))
        if runs[-1]["rc"] != 0:
            sys.exit(f"cold_start: run {i} failed (rc {runs[-1]['rc']}): {res.stderr[-500:]}")
        time.sleep(0.2)
    # One more run with -X importtime to tell whether torch was imported at all.
    cmd = [sys.executable, "-X", "importtime", "-m", "napari_recist_seg", "segment", str(image),
           "--recist", str(csv), "--out", str(work / "out_imports"), "--quiet"]
    if args.model:
        cmd += ["--model", args.model]
    imp = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    imported = {line.rsplit("|", 1)[-1].strip() for line in imp.stderr.splitlines() if "|" in line}
    masks = sorted((work / "out0").rglob("*.png"))
    wall = statistics.median(r["wall_s"] for r in runs)
    rss = statistics.median(r["peak_rss_mb"] for r in runs)
    print(json.dumps({
        "command": "python -m napari_recist_seg segment IMAGE --recist CSV --out DIR --quiet",
        "image": image.name,
        "model": args.model or "default (shipped)",
        "runs": len(runs),
        "wall_s_median": round(wall, 3),
        "peak_rss_mb_median": round(rss, 1),
        "wall_s_all": [round(r["wall_s"], 3) for r in runs],
        "peak_rss_mb_all": [round(r["peak_rss_mb"], 1) for r in runs],
        "torch_imported": "torch" in imported,
        "masks_written": len(masks),
        "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "cpu_count": os.cpu_count(),
        "target_wall_s": TARGET_WALL_S,
        "target_peak_rss_mb": TARGET_RSS_MB,
        "meets_targets": wall <= TARGET_WALL_S and rss <= TARGET_RSS_MB,
    }, indent=2))


if __name__ == "__main__":
    main()
