"""Peak memory of segmentation: bounded by the crop, not the image.

Each scenario runs in a fresh subprocess and reports its peak resident set size
(``VmHWM`` from ``/proc/self/status``, else ``resource.getrusage``), before and after
the work, so the figure is what segmenting costs on top of Python + torch + the model:

- ``job_3000x2000``: ``run_segment`` on a dataset holding one synthetic 3000x2000 RGB
  photograph (a real ISIC image resized up, saved as JPEG) with 10 lesions in its
  ``recist.csv`` (the expert lesion plus 9 RECIST of 40..1200 px across the image):
  read, segment, write the mask, the labels image and ``measurements.csv``.
  Budget (DESIGN.md section 7): peak RSS < 1.5 GB.
- ``volume_512x512x300``: ``Predictor.segment`` on a 512x512x300 int16 CT volume
  (the real LiTS case resized, 150 MB) with 10 lesions on 10 slices. The volume is
  allocated before the baseline; the increase during segmenting shows that no slice
  or volume copy is made (also measured with ``tracemalloc``: numpy allocations only).

Usage::

    python benchmarks/memory.py [--model DIR] [--scenario job_3000x2000 ...]

Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from latency import ISIC, SHARED_DATA, load_predictor, machine_info  # noqa: E402

BUDGET_BYTES = 1.5e9
LITS = SHARED_DATA / "lits_case117"
SCENARIOS = ("job_3000x2000", "volume_512x512x300")


def peak_rss() -> int:
    """Peak resident set size of this process in bytes."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return ru if sys.platform == "darwin" else ru * 1024


def current_rss() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return peak_rss()


def reset_peak() -> bool:
    """Reset the kernel's peak RSS counter (Linux >= 4.0); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _lesions_3000x2000(mask_big: np.ndarray) -> list:
    """The expert lesion plus 9 RECIST of various sizes spread over the image."""
    from napari_recist_seg.recist import Recist, recist_from_mask

    h, w = mask_big.shape
    out = [recist_from_mask(mask_big)]
    sizes = [40, 80, 150, 250, 400, 600, 800, 1000, 1200]
    rng = np.random.default_rng(0)
    for L in sizes:
        r = L / 2
        cr = rng.uniform(r * 0.6 + 1, h - r * 0.6 - 2)
        cc = rng.uniform(r + 1, w - r - 2)
        out.append(
            Recist([[cr, cc - r], [cr, cc + r]], [[cr - 0.3 * L, cc], [cr + 0.3 * L, cc]])
        )
    return out


def prepare_job(root: Path) -> int:
    """Write the 3000x2000 dataset; returns the number of lesions."""
    import cv2
    from PIL import Image

    from napari_recist_seg.data.recist_csv import RecistRecord, write_recist_csv

    image = np.asarray(Image.open(ISIC / "images" / "ISIC_0000000.jpg").convert("RGB"))
    mask = np.asarray(Image.open(ISIC / "masks" / "ISIC_0000000_segmentation.png")) > 0
    big = cv2.resize(image, (3000, 2000), interpolation=cv2.INTER_CUBIC)
    mask_big = cv2.resize(mask.astype(np.uint8), (3000, 2000), interpolation=cv2.INTER_NEAREST) > 0
    (root / "images").mkdir(parents=True)
    Image.fromarray(big).save(root / "images" / "big.jpg", quality=92)
    recists = _lesions_3000x2000(mask_big)
    write_recist_csv(
        root / "recist.csv",
        [RecistRecord(root / "images" / "big.jpg", i, r) for i, r in enumerate(recists, 1)],
    )
    return len(recists)


def child(scenario: str, model: str | None, workdir: Path) -> dict:
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    predictor, model_info = load_predictor(model, "cpu")
    result: dict = {"scenario": scenario, "model": model_info}
    if scenario == "job_3000x2000":
        from napari_recist_seg.jobs.segment import run_segment

        # Warm up torch's lazy allocations on a small image so the baseline is fair.
        from napari_recist_seg.recist import Recist

        predictor.segment(np.zeros((256, 256, 3), np.uint8),
                          [Recist([[128, 100], [128, 160]], [[110, 130], [146, 130]])])
        baseline_peak = peak_rss()
        baseline_rss = current_rss()
        reset_peak()
        t0 = time.perf_counter()
        report = run_segment(workdir / "ds", workdir / "out", predictor=predictor)
        seconds = time.perf_counter() - t0
        peak = peak_rss()
        result.update(
            {
                "what": "run_segment: one 3000x2000 RGB JPEG, 10 lesions (40..1200 px), "
                "mask + labels + measurements.csv written",
                "lesions": 10,
                "processed": report.processed,
                "failures": report.failures,
                "seconds": round(seconds, 3),
                "rss_before_mb": round(baseline_rss / 1e6, 1),
                "peak_rss_before_mb": round(baseline_peak / 1e6, 1),
                "peak_rss_mb": round(max(peak, baseline_rss) / 1e6, 1),
                "peak_increase_mb": round((peak - baseline_rss) / 1e6, 1),
                "image_mb": round(3000 * 2000 * 3 / 1e6, 1),
                "budget_mb": BUDGET_BYTES / 1e6,
                "within_budget": max(peak, baseline_peak) < BUDGET_BYTES,
            }
        )
    elif scenario == "volume_512x512x300":
        import tracemalloc

        import cv2
        import nibabel as nib

        from napari_recist_seg.recist import RecistError, recist_from_mask

        ct = np.asarray(nib.load(str(LITS / "ct.nii.gz")).dataobj).transpose(2, 1, 0)
        lab = np.asarray(nib.load(str(LITS / "labels.nii.gz")).dataobj).transpose(2, 1, 0)
        volume = np.empty((300, 512, 512), np.int16)
        src = np.minimum((np.arange(300) * ct.shape[0]) // 300, ct.shape[0] - 1)
        for z, s in enumerate(src):
            volume[z] = cv2.resize(ct[s].astype(np.int16), (512, 512), interpolation=cv2.INTER_LINEAR)
        # 10 tumour slices -> RECIST at 512 px (from the resized tumour label).
        tumour_src = [int(s) for s in np.flatnonzero((lab == 2).any(axis=(1, 2)))]
        recists = []
        for s in tumour_src[:: max(1, len(tumour_src) // 12)]:
            z = int(np.flatnonzero(src == s)[0])
            m = cv2.resize((lab[s] == 2).astype(np.uint8), (512, 512), interpolation=cv2.INTER_NEAREST)
            try:  # a derived RECIST of an odd-shaped tumour may not cross: skip it
                recists.append(recist_from_mask(m > 0, slice_index=z).validate(volume.shape))
            except RecistError:
                continue
        recists = recists[:10]
        predictor.segment(volume, recists[:1])  # warm-up
        baseline_rss = current_rss()
        reset_peak()
        tracemalloc.start()
        t0 = time.perf_counter()
        results = predictor.segment(volume, recists)
        seconds = time.perf_counter() - t0
        _, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        peak = peak_rss()
        sides = [max(r.mask.shape) for r in results]
        result.update(
            {
                "what": "Predictor.segment on a 512x512x300 int16 volume, 10 lesions on 10 slices",
                "volume_mb": round(volume.nbytes / 1e6, 1),
                "lesions": len(results),
                "crop_sides_px": sides,
                "seconds": round(seconds, 3),
                "rss_before_mb": round(baseline_rss / 1e6, 1),
                "peak_rss_mb": round(max(peak, baseline_rss) / 1e6, 1),
                "peak_increase_mb": round((peak - baseline_rss) / 1e6, 1),
                "numpy_traced_peak_mb": round(traced_peak / 1e6, 2),
            }
        )
    result["machine"] = machine_info(predictor.device)
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--scenario", nargs="*", default=list(SCENARIOS), choices=SCENARIOS)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(child(args.child, args.model, Path(args.workdir))))
        return {}
    if not (ISIC / "images").is_dir():
        sys.exit(f"real ISIC data not found at {ISIC}")
    results = {}
    with tempfile.TemporaryDirectory(prefix="recist_memory_") as tmp:
        work = Path(tmp)
        for scenario in args.scenario:
            if scenario == "job_3000x2000":
                prepare_job(work / "ds")
            cmd = [sys.executable, __file__, "--child", scenario, "--workdir", str(work)]
            if args.model:
                cmd += ["--model", args.model]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                results[scenario] = {"error": proc.stderr.strip().splitlines()[-1:]}
                continue
            results[scenario] = json.loads(proc.stdout.strip().splitlines()[-1])
    out = {"benchmark": "memory", "scenarios": results}
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
