"""Bulk segmentation including start-up: ``recist-seg segment`` of N real ISIC images.

One run reports, as one JSON object on stdout:

- ``cli_<variant>``: wall time of a fresh ``python -m napari_recist_seg segment DS --out
  OUT -q`` process (interpreter start, imports, model load, reading, inference, writing
  every mask and ``measurements.csv``): lesions/s *including start-up*, its CPU time,
  for each of ``--variants`` (:data:`VARIANTS`; run in turn ``--repeat`` times, medians),
  and the peak RSS of them all;
- ``floor``: the compute floor measured in the same run: the network's forward pass
  alone over the same lesions' inputs (prepared beforehand), in batches, for the float
  and the INT8 graph;
- ``stages``: where the time goes, each stage timed alone in process (reading the
  JPEGs, preprocessing, forward, postprocessing, writing the masks);
- ``threads``: forward-pass throughput for ONNX Runtime intra-op threads x parallel
  batches (with ``--threads-sweep``);
- ``before_<variant>`` (with ``--before DIR``): the same variants from another
  checkout (``git archive main | tar -x -C DIR``), interleaved with this one's, so
  that before and after see the same load;
- the load average before and after, and this process's nice value: the machine is
  shared, so the figures are only as good as the load allows. ``cpu_ms_per_lesion``
  (the child's user + sys, start-up included) is steadier than wall time.

The dataset (symlinks + ``recist.csv`` with RECIST derived from the expert masks,
``benchmarks/throughput.py``'s helper) is prepared before any timing.

Usage::

    python benchmarks/bulk.py [--n 1000] [--variants pipelined,fp32,serial,cv1] [--repeat 3]
        [--threads-sweep] [--before DIR]

Goal (issue 14): >= 150 lesions/s including start-up on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# This checkout's package (also in process), not an editable install elsewhere.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from throughput import ISIC, make_dataset  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GOAL_LESIONS_PER_S = 150.0


class _Done(Exception):
    """``--cli-only``: the CLI variants are measured, skip the rest."""


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


#: ``--variants``: name -> (extra CLI arguments, extra environment).
VARIANTS: dict[str, tuple[list[str], dict[str, str]]] = {
    "pipelined": ([], {}),  # the default: INT8 graph, worker processes (one per core, jobs/segment_processes.py)
    "threads": ([], {"RECIST_SEG_WORKERS": "1"}),  # one process: reader / 2 segmenters / writer threads
    "fp32": (["--precision", "fp32"], {}),  # the float graph, same pipeline
    "serial": ([], {"RECIST_SEG_SERIAL": "1"}),  # the plain loop, INT8
    "cv1": ([], {"OPENCV_FOR_THREADS_NUM": "1"}),  # OpenCV without its own threads
    "cv1blas1": ([], {"OPENCV_FOR_THREADS_NUM": "1", "OPENBLAS_NUM_THREADS": "1"}),
    # the threaded pipeline with one / three segmenters (one ONNX Runtime thread each)
    "seg1": ([], {"RECIST_SEG_WORKERS": "1", "RECIST_SEG_SEGMENTERS": "1"}),
    "seg3": ([], {"RECIST_SEG_WORKERS": "1", "RECIST_SEG_SEGMENTERS": "3"}),
}


def run_cli(ds: Path, out: Path, variant: str, repo: Path = REPO) -> dict:
    """Time one fresh CLI process of checkout ``repo`` end to end (its CPU time from
    rusage)."""
    extra, env_extra = VARIANTS[variant]
    env = dict(os.environ, **env_extra, PYTHONPATH=str(repo))
    cmd = [sys.executable, "-m", "napari_recist_seg", "segment", str(ds), "--out", str(out), "-q", *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"segment failed (rc {proc.returncode}): {proc.stderr.strip()[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"seconds": round(seconds, 3), "cpu_s": round(cpu, 2), "rc": proc.returncode}


def stage_times(items, predictor, batch: int) -> tuple[dict, "object"]:
    """Each stage alone, in process, over all items (seconds)."""
    import numpy as np

    from napari_recist_seg.data.images import read_image
    from napari_recist_seg.jobs import outdir
    from napari_recist_seg.jobs.segment_commit import _write_png
    from napari_recist_seg.preprocess import make_input
    from napari_recist_seg.recist import snap

    t0 = time.perf_counter()
    images = [read_image(it.image_path).array for it in items]
    read_s = time.perf_counter() - t0
    recists = [[snap(r, image_shape=im.shape) for _, r in it.lesions] for it, im in zip(items, images)]
    t0 = time.perf_counter()
    inputs = [make_input(im, r, predictor.preprocess)[0] for im, rs in zip(images, recists) for r in rs]
    prep_s = time.perf_counter() - t0
    x = np.stack(inputs)
    timings: dict[str, float] = {}
    results = []
    for i in range(0, len(items), 8):  # the bulk job's chunks of 8 images
        pairs = list(zip(images[i : i + 8], recists[i : i + 8]))
        results.extend(predictor.segment_many(pairs, batch_size=batch, timings=timings))
    tmp = Path(tempfile.mkdtemp(prefix="recist_bulk_w_"))
    outdir.prepare_out(tmp)
    t0 = time.perf_counter()
    with outdir.Journal(tmp) as journal:  # as the job commits: the mask, then its line
        for k, (im, res) in enumerate(zip(images, results)):
            union = np.zeros(im.shape[:2], np.uint8)
            for r in res:
                r.paste_into(union, 255)
            _write_png(tmp / f"{k}.png", union)
            outdir.write_record(tmp, str(k), [f"{k}.png"], [{"lesion": "1"}], journal=journal)
    write_s = time.perf_counter() - t0
    shutil.rmtree(tmp, ignore_errors=True)
    stages = {
        "read_s": read_s,
        "preprocess_s": prep_s,
        "segment_many_s": sum(timings.values()),
        **{f"segment_many_{k}_s": v for k, v in timings.items()},
        "paste_write_s": write_s,
    }
    return {k: round(v, 3) for k, v in stages.items()}, x


def forward_rate(graph: bytes, x, threads: int, parallel: int, batch: int) -> float:
    """Lesions/s of the forward pass alone: ``parallel`` sessions of ``threads``
    intra-op threads each running batches concurrently."""
    from napari_recist_seg.runtime import onnx_session_runner

    runs = [onnx_session_runner(graph, threads) for _ in range(parallel)]
    for r in runs:
        r(x[:batch])  # warm up
    chunks = [x[i : i + batch] for i in range(0, len(x), batch)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(lambda kc: runs[kc[0] % parallel](kc[1]), enumerate(chunks)))
    return round(len(x) / (time.perf_counter() - t0), 1)


def forward_cpu_ms(graph: bytes, x, batch: int = 8) -> float:
    """The compute floor as the bulk job pays it: process CPU ms per lesion of the
    forward pass alone, one ONNX Runtime thread, batches of ``batch`` (the job's chunks
    of 8 images), after a warm-up."""
    from napari_recist_seg.runtime import onnx_session_runner

    run = onnx_session_runner(graph, 1)
    run(x[:batch])
    c0 = time.process_time()
    for i in range(0, len(x), batch):
        run(x[i : i + batch])
    return round(1000 * (time.process_time() - c0) / len(x), 3)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="number of images")
    parser.add_argument("--variants", default="pipelined,threads,fp32",
                        help=f"CLI variants timed in turn, comma-separated: {', '.join(VARIANTS)}")
    parser.add_argument("--repeat", type=int, default=1, help="times each variant is run (median)")
    parser.add_argument("--threads-sweep", action="store_true",
                        help="forward rate for intra-op threads x parallel batches")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--cli-only", action="store_true", help="skip the stages and the floor")
    parser.add_argument("--before", type=Path, default=None,
                        help="another checkout whose variants are timed too (before_<variant>)")
    args = parser.parse_args(argv)
    if not (ISIC / "images").is_dir():
        sys.exit(f"real ISIC data not found at {ISIC}")
    tmp = Path(tempfile.mkdtemp(prefix="recist_bulk_"))
    out: dict = {"benchmark": "bulk", "images": args.n, "nice": os.nice(0),
                 "cpu_count": os.cpu_count(), "loadavg_before": _load()}
    try:
        n_lesions = make_dataset(tmp / "ds", args.n)
        out["lesions"] = n_lesions
        names = [v for v in args.variants.split(",") if v]
        for name in names:
            if name not in VARIANTS:
                sys.exit(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
        checkouts = [("", REPO)] + ([("before_", args.before.resolve())] if args.before else [])
        runs: dict[str, list[dict]] = {f"{tag}{name}": [] for tag, _ in checkouts for name in names}
        for _ in range(max(1, args.repeat)):  # interleaved: the load hits every variant alike
            for name in names:
                for tag, repo in checkouts:
                    res = run_cli(tmp / "ds", tmp / f"out_{tag}{name}", name, repo)
                    res["masks_written"] = len(list((tmp / f"out_{tag}{name}").glob("*.png")))
                    shutil.rmtree(tmp / f"out_{tag}{name}", ignore_errors=True)
                    runs[f"{tag}{name}"].append(res)
        for name, results in runs.items():
            secs = sorted(r["seconds"] for r in results)
            median = secs[len(secs) // 2]
            out[f"cli_{name}"] = {
                "seconds_median": median, "seconds_all": [r["seconds"] for r in results],
                "cpu_s_median": sorted(r["cpu_s"] for r in results)[len(results) // 2],
                "cpu_s_all": [r["cpu_s"] for r in results],
                "cpu_ms_per_lesion": round(
                    1000 * sorted(r["cpu_s"] for r in results)[len(results) // 2] / n_lesions, 2),
                "masks_written": results[0]["masks_written"],
                "lesions_per_s": round(n_lesions / median, 1),
                "within_goal": n_lesions / median >= GOAL_LESIONS_PER_S,
            }
        out["cli_peak_rss_mb"] = round(
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)

        if args.cli_only:
            raise _Done
        from napari_recist_seg.jobs.segment import plan_segment
        from napari_recist_seg.predict import Predictor

        predictor = Predictor.load(None, device="cpu")
        items, _, _ = plan_segment(tmp / "ds")
        out["stages"], x = stage_times(items, predictor, args.batch_size)
        from napari_recist_seg.model import load_checkpoint_graph
        from napari_recist_seg.quantize import read_int8_graph

        graph = load_checkpoint_graph(predictor.path)[0]
        int8 = read_int8_graph(predictor.path, json.loads((predictor.path / "config.json").read_text()))
        threads = int(os.environ.get("OMP_NUM_THREADS", 0)) or len(os.sched_getaffinity(0))
        out["floor"] = {"what": "forward pass alone, ONNX Runtime, batches of "
                        f"{args.batch_size}, {threads} intra-op threads: lesions/s",
                        "fp32": forward_rate(graph, x, threads, 1, args.batch_size)}
        if int8 is not None:
            out["floor"]["int8"] = forward_rate(int8, x, threads, 1, args.batch_size)
            out["floor"]["int8_cpu_ms_per_lesion_1thread_b8"] = forward_cpu_ms(int8, x)
        out["stages"]["precision"] = predictor._runner.precision
        if args.threads_sweep:
            out["threads"] = {
                "key": "intra-op threads x parallel sessions, batch size: lesions/s",
                **{f"{t}x{p} b{b}": forward_rate(graph, x, t, p, b)
                   for t, p, b in ((1, 1, 32), (2, 1, 32), (1, 2, 32), (2, 1, 8), (1, 2, 8))}}
    except _Done:
        pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out["loadavg_after"] = _load()
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
