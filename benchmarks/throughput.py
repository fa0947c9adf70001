"""Bulk segmentation throughput: ``run_segment`` on N real ISIC images.

A temporary dataset links N images of ``../shared/data/isic2017_train256`` and gets a
``recist.csv`` with RECIST derived from the expert masks *before* timing (derivation
is a one-off preparation, not part of segmenting). Then ``run_segment`` is timed end
to end with a loaded model: reading each JPEG, cropping, the forward pass, pasting,
post-processing, measuring, writing each mask PNG atomically and ``measurements.csv``.
Model loading is reported separately. Prints one JSON object on stdout.

Usage::

    python benchmarks/throughput.py [--n 200] [--model DIR] [--threads N]

Budget (DESIGN.md section 7): >= 30 lesions/s on the 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from latency import ISIC, load_predictor, machine_info  # noqa: E402

BUDGET_LESIONS_PER_S = 30.0


def make_dataset(root: Path, n: int, offset: int = 0) -> int:
    """Link ``n`` ISIC images + masks under ``root`` and write its recist.csv.

    Returns the number of lesions in the CSV.
    """
    from napari_recist_seg.data.dataset import dataset_recists, scan_dataset
    from napari_recist_seg.data.recist_csv import write_recist_csv

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    names = sorted(os.listdir(ISIC / "images"))[offset : offset + n]
    for name in names:
        stem = name.rsplit(".", 1)[0]
        os.symlink(ISIC / "images" / name, root / "images" / name)
        mask = f"{stem}_segmentation.png"
        os.symlink(ISIC / "masks" / mask, root / "masks" / mask)
    derived = dataset_recists(scan_dataset(root))
    records = [r for recs in derived.values() for r in recs]
    write_recist_csv(root / "recist.csv", records)
    return len(records)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="number of images")
    parser.add_argument("--offset", type=int, default=0, help="first image index")
    parser.add_argument("--model", default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--backend", choices=["auto", "onnxruntime", "torchscript", "eager"],
                        default="auto", help="how the network runs (default: fastest that agrees)")
    args = parser.parse_args(argv)

    import torch

    from napari_recist_seg.jobs.segment import run_segment

    if args.threads:
        torch.set_num_threads(args.threads)
    if not (ISIC / "images").is_dir():
        sys.exit(f"real ISIC data not found at {ISIC}")
    tmp = Path(tempfile.mkdtemp(prefix="recist_throughput_"))
    try:
        n_lesions = make_dataset(tmp / "ds", args.n, args.offset)
        t0 = time.perf_counter()
        predictor, model_info = load_predictor(
            args.model, args.device, **({} if args.backend == "auto" else {"backend": args.backend})
        )
        load_s = time.perf_counter() - t0
        # Warm up the lazily initialised kernels on a separate, tiny run.
        warm = tmp / "warm"
        make_dataset(warm, 2, args.offset + args.n)
        run_segment(warm, tmp / "warm_out", predictor=predictor)

        c0 = time.process_time()
        t0 = time.perf_counter()
        report = run_segment(tmp / "ds", tmp / "out", predictor=predictor, batch_size=args.batch_size)
        seconds = time.perf_counter() - t0
        cpu_seconds = time.process_time() - c0
        written = len(list((tmp / "out").glob("*.png")))
        rate = n_lesions / seconds
        out = {
            "benchmark": "throughput",
            "what": "run_segment on real ISIC 256x256 JPEGs, RECIST from recist.csv "
            "(derived from expert masks beforehand), masks + measurements.csv written",
            "images": args.n,
            "lesions": n_lesions,
            "processed": report.processed,
            "failures": len(report.failures),
            "masks_written": written,
            "seconds": round(seconds, 3),
            "lesions_per_s": round(rate, 2),
            "ms_per_lesion": round(1000 * seconds / max(n_lesions, 1), 2),
            "cpu_seconds": round(cpu_seconds, 3),
            "model_load_s": round(load_s, 3),
            "model": model_info,
            "machine": machine_info(predictor.device),
            "budget_lesions_per_s": BUDGET_LESIONS_PER_S,
            "within_budget": rate >= BUDGET_LESIONS_PER_S,
        }
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
