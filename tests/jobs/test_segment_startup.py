"""The start-up of a bulk ``run_segment`` with the default model: what a fresh process
loads (issue 14: bulk at >= 150 lesions/s *including* start-up)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from napari_recist_seg.predict import DEFAULT_MODEL_DIR

REPO = Path(__file__).resolve().parents[2]
STEMS = ["ISIC_0000000", "ISIC_0000001", "ISIC_0000002"]


def test_default_bulk_run_never_loads_scipy_ndimage(tmp_path, make_isic_dataset):
    # scipy.ndimage costs 0.3-0.8 s of CPU to import (a tenth of a 1000-image run on
    # 2 cores); the default "recist" refinement and the job never need it.
    if not (DEFAULT_MODEL_DIR / "config.json").is_file():
        pytest.skip(f"no default model at {DEFAULT_MODEL_DIR}")
    ds = make_isic_dataset(tmp_path / "ds", STEMS)
    code = (
        "import sys\n"
        "from napari_recist_seg.jobs.segment import run_segment\n"
        f"report = run_segment({str(ds)!r}, {str(tmp_path / 'out')!r}, device='cpu')\n"
        "loaded = [m for m in ('scipy.ndimage._ndimage_api', 'torch') if m in sys.modules]\n"
        "print(report.processed, len(report.failures), loaded)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [str(len(STEMS)), "0", "[]"]


_FIRST_USE_RACE = """
import threading
import numpy as np
from napari_recist_seg import postprocess
barrier, errors = threading.Barrier(8), []
def use(via_import):
    barrier.wait()
    try:
        if via_import:  # as grabcut / refine import it in their functions
            from scipy import ndimage
        else:
            ndimage = postprocess.ndimage
        ndimage.label(np.ones((4, 4), bool))
    except Exception as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=use, args=(i % 2 == 0,)) for i in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(errors)
"""


def test_the_lazy_scipy_ndimage_is_safe_from_threads_at_first_use():
    # Two segmenter threads reaching GrabCut (a fine-tuned model's blend) at once saw an
    # empty scipy.ndimage under importlib's LazyLoader: "no attribute 'label'".
    out = subprocess.run([sys.executable, "-c", _FIRST_USE_RACE], capture_output=True, text=True,
                         cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
