"""CPU per lesion of the serial bulk job in process, start-up excluded, for a checkout.

``run_segment`` (``RECIST_SEG_SERIAL=1``, one ONNX Runtime thread) over a prepared
dataset after a warm-up run; process CPU of the whole job and of ``_commit`` (paste,
mask file, record) per lesion, as one JSON line. Run it for two checkouts in turn
(e.g. main unpacked by ``git archive main | tar -x -C DIR``) to compare them::

    python benchmarks/bulk_inprocess.py REPO DATASET   # DATASET: throughput.make_dataset
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    repo, ds = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
    sys.path.insert(0, str(repo))
    os.environ["RECIST_SEG_SERIAL"] = "1"
    from napari_recist_seg.jobs import segment
    from napari_recist_seg.predict import Predictor

    pred = Predictor.load(None, device="cpu", threads=1)
    tmp = Path(tempfile.mkdtemp(prefix="recist_bulk_ip_"))
    try:
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
