"""CPU per lesion of the bulk job in process, start-up excluded, for a checkout.

``run_segment`` over a prepared dataset after a warm-up run, as one JSON line: the
serial loop (``RECIST_SEG_SERIAL=1``, one ONNX Runtime thread) with the process CPU of
the whole job and of ``_commit`` (paste, mask file, record) per lesion; with
``--pipelined N``, instead N runs of the default pipelined job (its threads and
sessions as the CLI sets them up) with their wall times and lesions/s (start-up
excluded: add the CLI's ~0.5 s for ``bulk.py``'s figure). Run it for two checkouts in
turn (e.g. main unpacked by ``git archive main | tar -x -C DIR``) to compare them::

    python benchmarks/bulk_inprocess.py REPO DATASET [--pipelined 3]   # DATASET: throughput.make_dataset
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _pipelined(segment, ds: Path, tmp: Path, runs: int) -> dict:
    """Wall and CPU of ``runs`` pipelined jobs (the predictor set up as the CLI does)."""
    from napari_recist_seg.predict import Predictor
    from napari_recist_seg.runtime import default_threads

    threads = max(1, default_threads() // segment._SEGMENTERS)
    pred = Predictor.load(None, device="cpu", threads=threads)
    segment.run_segment(ds, tmp / "warm", predictor=pred)
    walls, cpus, n = [], [], 1
    for i in range(runs):
        t0, c0 = time.perf_counter(), time.process_time()
        n = max(1, segment.run_segment(ds, tmp / f"out{i}", predictor=pred).processed)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
        shutil.rmtree(tmp / f"out{i}", ignore_errors=True)
    return {"processed": n, "wall_s": [round(w, 3) for w in walls],
            "lesions_per_s_median": round(n / statistics.median(walls), 1),
            "cpu_ms_per_lesion_median": round(1000 * statistics.median(cpus) / n, 3)}


def main() -> None:
    repo, ds = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
    runs = int(sys.argv[sys.argv.index("--pipelined") + 1]) if "--pipelined" in sys.argv else 0
    sys.path.insert(0, str(repo))
    if not runs:
        os.environ["RECIST_SEG_SERIAL"] = "1"
    from napari_recist_seg.jobs import segment
    from napari_recist_seg.predict import Predictor

    tmp = Path(tempfile.mkdtemp(prefix="recist_bulk_ip_"))
    try:
        if runs:
            result = {"repo": str(repo), "pipelined": _pipelined(segment, ds, tmp, runs)}
            print(json.dumps({**result, "loadavg": [round(x, 2) for x in os.getloadavg()]}))
            return
        pred = Predictor.load(None, device="cpu", threads=1)
        segment.run_segment(ds, tmp / "warm", predictor=pred)
        commit_cpu = [0.0]
        real = segment._commit

        def timed(*args, **kw):
            c0 = time.process_time()
            try:
                return real(*args, **kw)
            finally:
                commit_cpu[0] += time.process_time() - c0

        segment._commit = timed
        c0 = time.process_time()
        report = segment.run_segment(ds, tmp / "out", predictor=pred)
        cpu = time.process_time() - c0
        n = max(1, report.processed)
        print(json.dumps({"repo": str(repo), "processed": report.processed,
                          "job_cpu_ms_per_lesion": round(1000 * cpu / n, 3),
                          "commit_cpu_ms_per_lesion": round(1000 * commit_cpu[0] / n, 3),
                          "loadavg": [round(x, 2) for x in os.getloadavg()]}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
