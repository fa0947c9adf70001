"""``recist-seg`` command line: argument parsing only; the work is in ``jobs/``.

Exit status: 0 success, 2 bad input (one-line reason on stderr), 3 some files failed
(listed in ``OUT/failures.csv``), 130 cancelled (Ctrl-C; finished outputs are kept).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Sequence

from napari_recist_seg import __version__
from napari_recist_seg.data.atomic import atomic_write_text
from napari_recist_seg.intensity import resolve_window
from napari_recist_seg.jobs.common import (
    Cancelled,
    CancelToken,
    InputError,
    JobReport,
    ProgressEvent,
)


class _StderrProgress:
    """Progress on stderr: a rewritten line on a terminal, sparse lines in a log."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self._last_printed = -1.0

    def __call__(self, event: ProgressEvent) -> None:
        if self.quiet:
            return
        if self.tty:
            end = "\n" if event.done >= event.total else ""
            print("\r" + event.format()[:120].ljust(120), end=end, file=sys.stderr, flush=True)
            return
        # In logs print about every 10% (and the last step) rather than every file.
        step = max(1, event.total // 10)
        if event.done == event.total or event.done % step == 0 or event.elapsed - self._last_printed > 30:
            self._last_printed = event.elapsed
            print(event.format(), file=sys.stderr, flush=True)


EXIT_CODES = """exit status:
  0    success
  2    bad input (one-line reason on stderr)
  3    some files failed (listed in OUT/failures.csv; the others are done)
  130  cancelled (Ctrl-C; finished outputs are kept)

'recist-seg COMMAND --help' shows a command's options."""


def _version() -> str:
    """The installed distribution's version (the package's own when not installed)."""
    try:
        return version("napari-recist-seg")
    except PackageNotFoundError:
        return __version__


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output")


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="segment a validation set with one or two models and "
                                       "compare them case by case (B - A)")
    p.add_argument("dataset", type=Path, help="dataset folder with images/, masks/ [recist.csv]")
    p.add_argument("--model", type=Path, action="append", default=None, metavar="CKPT",
                   help="checkpoint, once or twice (A, then B; default: the shipped model)")
    p.add_argument("--out", type=Path, required=True,
                   help="writes pred_A/, pred_B/, compare.json, compare.csv")
    p.add_argument("--derive", action="store_true",
                   help="prompt with RECIST derived from the masks, not recist.csv")
    p.add_argument("--spacing", type=float, nargs="+", default=None, metavar="MM",
                   help="pixel spacing in mm (row col, or z row col) when the images have none")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    _add_common(p)


class _VersionAction(argparse.Action):
    """``--version``: the installed version, looked up only when asked for (the lookup
    scans the installed distributions: ~30 ms of every command's start otherwise)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        print(f"{parser.prog} {_version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The ``recist-seg`` parser: one sub-command per job, each built by its ``_add_*``."""
    parser = argparse.ArgumentParser(
        prog="recist-seg",
        description="RECIST measurements to lesion masks; weakly supervised A1 / A1+L training.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_VersionAction,
                        help="show program's version number and exit")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_targets(sub)
    _add_train(sub)
    _add_segment(sub)
    _add_evaluate(sub)
    _add_compare(sub)
    _add_view(sub)
    for command in sub.choices.values():  # every command's --help lists the exit codes
        command.epilog = EXIT_CODES.split("\n\n")[0]
        command.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


def _add_targets(sub: argparse._SubParsersAction) -> None:
    """``recist-seg targets``: weak masks for a dataset."""
    p = sub.add_parser("targets", help="derive RECIST and write ellipse / GrabCut weak masks")
    p.add_argument("dataset", type=Path, help="dataset folder (images/, masks/, recist.csv)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--no-grabcut", action="store_true", help="ellipse targets only")
    p.add_argument("--overwrite", action="store_true", help="redo finished outputs")
    _add_common(p)


def _add_train(sub: argparse._SubParsersAction) -> None:
    """``recist-seg train``: A1 or A1+L from RECIST only."""
    p = sub.add_parser("train", help="train A1 or A1+L from RECIST only")
    p.add_argument("dataset", type=Path,
                   help="dataset folder (images/, optional masks/ and recist.csv)")
    p.add_argument("--mode", choices=["a1", "a1l"], default="a1l",
                   help="a1 = segmentation only, a1l = plus the RECIST-cluster task (default a1l)")
    p.add_argument("--out", type=Path, required=True, help="model folder to write")
    p.add_argument("--epochs", type=int, default=30, help="training epochs (default 30)")
    p.add_argument("--encoder", default="resnet18",
                   help="segmentation-models-pytorch encoder name (default resnet18)")
    p.add_argument("--encoder-weights", default=None,
                   help="e.g. imagenet (needs the weights cached or a network; falls back to random init)")
    p.add_argument("--clusters", default="auto", help="K, or 'auto' (silhouette)")
    p.add_argument("--lambda", dest="aux_weight", type=float, default=None,
                   help="weight of the cluster loss (A1+L)")
    p.add_argument("--target", choices=["ellipse", "grabcut"], default=None,
                   help="weak training target made from each RECIST (default ellipse)")
    p.add_argument("--input-size", type=int, default=None,
                   help="network input side in px (default 128)")
    p.add_argument("--batch-size", type=int, default=None, help="crops per step (default 16)")
    p.add_argument("--val-fraction", type=float, default=None,
                   help="share of images held out for model selection (default 0.1)")
    p.add_argument("--init", type=Path, default=None,
                   help="fine-tune from this checkpoint ('default': the shipped default model)")
    p.add_argument("--curated", type=Path, default=None,
                   help="folder of curated full masks to fine-tune on (with --init)")
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default 1e-3; fine-tuning with --init --curated --steps N: 1e-4)")
    p.add_argument("--steps", type=int, default=None,
                   help="fine-tuning with --init --curated: optimiser steps on top of the calibration "
                        "(default 0: the starting weights, calibrated to the curated masks; --epochs is not used)")
    p.add_argument("--device", default="auto",
                   help="auto (CUDA, else MPS, else CPU), cpu, cuda or mps")
    p.add_argument("--seed", type=int, default=0, help="random seed (split, init, augmentation)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a model already in --out (never --init's own folder or a shipped model)")
    _add_common(p)


def _add_segment(sub: argparse._SubParsersAction) -> None:
    """``recist-seg segment``: lesion masks from RECIST."""
    p = sub.add_parser("segment", help="segment lesions from RECIST with a model")
    p.add_argument("inputs", type=Path, nargs="+", help="a dataset folder, or image files")
    p.add_argument("--recist", type=Path, default=None,
                   help="RECIST CSV or DeepLesion DL_info.csv (default: the dataset's recist.csv)")
    p.add_argument("--model", type=Path, default=None, help="checkpoint (default: shipped model)")
    p.add_argument("--out", type=Path, required=True,
                   help="output folder (masks, measurements.csv, failures.csv)")
    p.add_argument("--device", default="auto",
                   help="auto (CPU unless a GPU is present), cpu, cuda or mps")
    p.add_argument("--overwrite", action="store_true",
                   help="redo images whose outputs exist (default: skip them, resume)")
    p.add_argument("--window", default=None,
                   help="CT window: soft_tissue (default), liver, lung, bone, or LEVEL,WIDTH in HU")
    p.add_argument("--3d", dest="three_d", action="store_true",
                   help="propagate each RECIST through the neighbouring slices: "
                        "OUT/<stem>_labels.nii.gz and volumes in measurements.csv")
    p.add_argument("--modality", choices=["auto", "ct", "other"], default="auto",
                   help="intensity rule: auto (DICOM tag / HU range), ct (window), "
                        "other (per-crop 1-99 percentiles; MR, X-ray, 16-bit photos)")
    p.add_argument("--polarity", choices=["auto", "dark", "bright"], default=None,
                   help="lesion polarity for grey images: auto (from each RECIST: a lesion brighter "
                        "than its surroundings is shown to the model inverted), dark (never invert), "
                        "bright (always invert)")
    p.add_argument("--tta", choices=["none", "flip", "flip4"], default=None,
                   help="test-time augmentation: the network's output averaged over mirrored "
                        "crops: none (default, fastest), flip (2x compute) or flip4 (4x; about "
                        "+0.002 Dice on the clinic proxy; the annotator runs flip)")
    p.add_argument("--precision", choices=["auto", "int8", "fp32"], default="auto",
                   help="network arithmetic on CPU: auto (the checkpoint's INT8 graph when it "
                        "stores one, about 3x faster), int8, or fp32 (the float graph)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="worker processes for a large 2D run on the CPU (default: the cores, at "
                        "most 8; env RECIST_SEG_WORKERS); 1 = one process with threads")
    _add_common(p)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    """``recist-seg evaluate``: predicted masks against ground truth."""
    p = sub.add_parser("evaluate", help="compare predicted masks with ground truth")
    p.add_argument("--pred", "--predictions", dest="pred", type=Path, required=True,
                   help="folder of predicted masks (a `recist-seg segment --out` folder)")
    p.add_argument("--gt", type=Path, required=True,
                   help="folder of ground-truth masks (matched to --pred by file stem)")
    p.add_argument("--json", type=Path, default=None, help="write all results here")
    p.add_argument("--spacing", type=float, nargs="+", default=None, metavar="MM",
                   help="pixel size ROW_MM COL_MM (or Z_MM ROW_MM COL_MM for volumes), "
                        "to report distances in mm")
    _add_common(p)


def _add_view(sub: argparse._SubParsersAction) -> None:
    """``recist-seg view``: napari with the annotator."""
    p = sub.add_parser("view", help="open napari with the RECIST annotator (and a sample)")
    p.add_argument("paths", type=Path, nargs="*", help="images or a RECIST CSV to open")
    p.add_argument("--sample", choices=["dermoscopy", "ct"], default=None,
                   help="open a shipped sample (default: dermoscopy when no paths are given)")
    p.add_argument("--widget", action="append", default=None,
                   choices=["RECIST annotator", "Bulk segment", "Train / fine-tune", "Evaluate"],
                   help="dock widget(s) to open (default: RECIST annotator)")


def _run(args: argparse.Namespace, cancel: CancelToken) -> int:
    progress = _StderrProgress(getattr(args, "quiet", False))
    report: JobReport
    if args.command == "targets":
        from napari_recist_seg.jobs.targets import run_targets

        report = run_targets(
            args.dataset, args.out, grabcut=not args.no_grabcut,
            overwrite=args.overwrite, progress=progress, cancel=cancel,
        )
    elif args.command == "segment":
        report = _segment(args, progress, cancel)
    elif args.command == "evaluate":
        return _evaluate(args, progress)
    elif args.command == "compare":
        return _compare(args, progress, cancel)
    elif args.command == "view":
        from napari_recist_seg._launch import open_viewer

        sample = args.sample or (None if args.paths else "dermoscopy")
        open_viewer(args.paths, sample=sample, widgets=args.widget or ["RECIST annotator"])
        return 0
    elif args.command == "train":
        from napari_recist_seg.jobs.train import run_train

        report = run_train(args, progress=progress, cancel=cancel)
    else:  # pragma: no cover - argparse refuses unknown commands
        raise InputError(f"unknown command {args.command}")
    if os.environ.get("RANK", "0") != "0":
        return report.exit_code  # under torchrun only rank 0 reports
    print(report.summary(), file=sys.stderr)
    for line in report.notes:
        print(line, file=sys.stderr)
    for file, reason in report.failures[:20]:
        print(f"  failed: {file}: {reason}", file=sys.stderr)
    if len(report.failures) > 20:
        print(f"  ... and {len(report.failures) - 20} more (see failures.csv)", file=sys.stderr)
    return report.exit_code


def _segment(args: argparse.Namespace, progress: _StderrProgress, cancel: CancelToken) -> JobReport:
    """``recist-seg segment``: 2D, or ``--3d`` through the volume."""
    from napari_recist_seg.jobs.segment import run_segment

    inputs = args.inputs[0] if len(args.inputs) == 1 and args.inputs[0].is_dir() else args.inputs
    if args.window is not None:
        resolve_window(args.window)  # a bad value: one line, exit 2
    # "other", not "grey": detect_modality reads "grey" as "decide from the values", which
    # would give an HU-looking volume the CT window the user just turned down.
    reading = {"window": args.window, "polarity": args.polarity, "tta": args.tta,
                 "modality": {"auto": None, "ct": "ct", "other": "other"}[args.modality]}
    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers must be 1 or more, got {args.workers}")
    if args.three_d:
        from napari_recist_seg.jobs.segment3d import run_segment3d as run_segment
    else:
        reading["workers"] = args.workers
    return run_segment(
        inputs, args.out, recist_csv=args.recist, model=args.model, device=args.device,
        overwrite=args.overwrite, progress=progress, cancel=cancel, precision=args.precision,
        **reading,
    )


def _evaluate(args: argparse.Namespace, progress: _StderrProgress) -> int:
    """``recist-seg evaluate``: the table on stdout, ``--json`` with every result."""
    from napari_recist_seg.jobs.evaluate import evaluate_folders

    if args.spacing is not None and len(args.spacing) not in (2, 3):
        raise InputError("--spacing takes 2 values (row, col) or 3 (z, row, col) in mm")
    if args.spacing is not None and not all(0 < s < float("inf") for s in args.spacing):
        raise InputError(
            "--spacing values must be positive finite mm, got " + " ".join(map(str, args.spacing))
        )
    result = evaluate_folders(
        args.pred, args.gt, spacing=tuple(args.spacing) if args.spacing else None,
        progress=progress,
    )
    print(result.format_table())
    if args.json is not None:
        try:
            atomic_write_text(args.json, json.dumps(result.to_dict(), indent=2))
        except OSError as exc:
            raise InputError(f"cannot write --json {args.json}: {exc.strerror or exc}") from None
    return 3 if result.failures else 0


@contextlib.contextmanager
def _cancel_on_sigint(cancel: CancelToken):
    """While a job runs, the first Ctrl-C sets ``cancel`` so the job stops cleanly
    after its current file (finished outputs and failures.csv written); the handler
    then steps aside, so a second Ctrl-C interrupts at once (``KeyboardInterrupt``)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def on_sigint(signum: int, frame: object) -> None:
        cancel.cancel()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print("\nrecist-seg: cancelling after the current item (Ctrl-C again to stop now)",
              file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _sigterm_as_interrupt() -> object:
    """SIGTERM (``kill``, a scheduler stopping the job) cancels like Ctrl-C: the job
    stops, finished outputs are kept and ``train_log.json`` says "cancelled". Returns
    the previous handler (``None`` off the main thread, where signals cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, signal.default_int_handler)


def _compare(args: argparse.Namespace, progress: _StderrProgress, cancel: CancelToken) -> int:
    from napari_recist_seg.jobs.compare import run_compare

    checkpoints = args.model or [None]
    if len(checkpoints) > 2:
        raise InputError("compare takes one or two --model checkpoints")
    if args.spacing is not None and len(args.spacing) not in (2, 3):
        raise InputError("--spacing takes 2 values (row, col) or 3 (z, row, col) in mm")
    models = [(label, ckpt, args.out / f"pred_{label}") for label, ckpt in zip("AB", checkpoints)]
    args.out.mkdir(parents=True, exist_ok=True)
    result = run_compare(
        args.dataset, args.out, models, derive=args.derive, device=args.device,
        spacing=tuple(args.spacing) if args.spacing else None, progress=progress, cancel=cancel,
    )
    atomic_write_text(args.out / "compare.json", json.dumps(result.to_dict(), indent=2))
    atomic_write_text(args.out / "compare.csv", result.to_csv())
    print(result.summary())
    if result.cancelled:
        print("recist-seg: cancelled; finished outputs are kept", file=sys.stderr)
        return 130
    for file, reason in result.failures[:20]:
        print(f"  failed: {file}: {reason}", file=sys.stderr)
    return 3 if result.failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cancel = CancelToken()
    # ``view`` runs napari's event loop, which handles Ctrl-C itself.
    guard = _cancel_on_sigint(cancel) if args.command != "view" else contextlib.nullcontext()
    previous = _sigterm_as_interrupt()
    try:
        with guard:
            return _run(args, cancel)
    except KeyboardInterrupt:
        cancel.cancel()
        print("recist-seg: cancelled; finished outputs are kept", file=sys.stderr)
        return 130
    except Cancelled:
        print("recist-seg: cancelled; finished outputs are kept", file=sys.stderr)
        return 130
    except (InputError, FileNotFoundError, NotADirectoryError, ValueError) as exc:
        # Input problems get one line, never a traceback.
        print(f"recist-seg: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # Folders that are read-only, full or not folders: one line too.
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"recist-seg: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)  # type: ignore[arg-type]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
