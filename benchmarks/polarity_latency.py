"""Cost of the lesion-polarity decision (napari_recist_seg.polarity) per lesion.

One 96x96 grey lesion (the dark mirror of ``tests/test_polarity.py``'s crescent image,
so ``auto`` decides "dark" and both modes give the same mask): ``Predictor.segment``
with ``polarity="auto"`` vs ``"dark"`` (no decision), and ``lesion_polarity`` alone;
medians of 40 interleaved calls, in ms. Run from the repository root::

    nice python3 benchmarks/polarity_latency.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from test_polarity import RECIST, _crescent_image  # noqa: E402

from napari_recist_seg.polarity import lesion_polarity  # noqa: E402
from napari_recist_seg.predict import Predictor  # noqa: E402


def main() -> None:
    pred = Predictor.load(None, device="cpu")
    img = 1200 - _crescent_image()
    res: dict[str, list[float]] = {"auto": [], "dark": [], "decide": []}
    for _ in range(3):
        pred.segment(img, [RECIST], modality="grey")
    for _ in range(40):
        for mode in ("auto", "dark"):
            t = time.perf_counter()
            pred.segment(img, [RECIST], modality="grey", polarity=mode)
            res[mode].append(time.perf_counter() - t)
        t = time.perf_counter()
        lesion_polarity(img, RECIST, pred.preprocess, modality="grey")
        res["decide"].append(time.perf_counter() - t)
    print({k: round(1000 * float(np.median(v)), 2) for k, v in res.items()}, "ms, median of 40")


if __name__ == "__main__":
    main()
