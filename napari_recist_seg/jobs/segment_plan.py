"""Planning a ``recist-seg segment`` run (:mod:`napari_recist_seg.jobs.segment`).

Inputs resolved to :class:`SegmentItem` (images with their RECIST and output stems),
and the checks made before anything is written: two inputs writing the same output
name, an ``OUT`` inside an input folder, files in ``OUT`` the tool did not write.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from napari_recist_seg.data import recist_csv as rcsv
from napari_recist_seg.data.dataset import _is_dicom_dir, dataset_recists, scan_dataset
from napari_recist_seg.data.deeplesion import read_deeplesion_csv
from napari_recist_seg.jobs import outdir
from napari_recist_seg.jobs.common import FAILURES_CSV, InputError
from napari_recist_seg.recist import Recist

__all__ = ["MEASUREMENTS_CSV", "SegmentItem", "plan_segment", "prompts_digest", "stale_record"]

MEASUREMENTS_CSV = "measurements.csv"


@dataclass
class SegmentItem:
    """One image to segment: where it is, its output stem and its RECIST."""

    image_path: Path
    stem: str
    lesions: list[tuple[int, Recist]] = field(default_factory=list)
    deeplesion: bool = False


def prompts_digest(item: SegmentItem) -> str:
    """A digest of an image's RECIST as the CSV (or the derivation from masks) gives
    them: ids, slices, endpoints. Kept in each record, so that a re-run can tell a
    committed image was made from other RECIST."""
    prompts = sorted(
        (int(lesion), -1 if r.slice_index is None else int(r.slice_index),
         np.asarray(r.long_axis, float).round(3).tolist(), np.asarray(r.short_axis, float).round(3).tolist())
        for lesion, r in item.lesions)
    return hashlib.sha1(json.dumps(prompts).encode()).hexdigest()[:16]


def stale_record(record: dict | None, item: SegmentItem) -> bool:
    """True when a committed image was made from other RECIST than ``item`` holds
    (records from before the digest was kept are taken as they are)."""
    return record is not None and "prompts" in record and record["prompts"] != prompts_digest(item)


# -- planning --------------------------------------------------------------------------


def _is_deeplesion_csv(path: Path) -> bool:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            header = next(csv.reader(fh), [])
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read RECIST CSV {path}: {exc}") from exc
    return "Measurement_coordinates" in [h.strip() for h in header]


def _read_records(recist_csv: Path) -> tuple[list, bool]:
    """Records from a RECIST CSV or a DeepLesion DL_info.csv, and whether it is the latter."""
    recist_csv = Path(recist_csv)
    if not recist_csv.is_file():
        raise InputError(f"RECIST CSV not found: {recist_csv}")
    if _is_deeplesion_csv(recist_csv):
        return list(read_deeplesion_csv(recist_csv, recist_csv.parent)), True
    return list(rcsv.read_recist_csv(recist_csv)), False


def _key(path: Path) -> str:
    return os.path.normcase(os.path.abspath(path))


def _output_stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz",):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _unique_stems(paths: Sequence[Path]) -> list[str]:
    """Output stems; files with the same name in different folders (DeepLesion's
    ``000001_01_01/103.png``) get their parent folders prefixed until unique."""
    stems = [_output_stem(p) for p in paths]
    seen: dict[tuple[str, str], Path] = {}
    for p, s in zip(paths, stems):
        # x.jpg and x.png in one folder: no folder prefix tells them apart.
        other = seen.setdefault((_key(p.parent), s.casefold()), p)
        if other != p:
            raise InputError(
                f"{other} and {p} would both be written as {s}.* in the output folder; "
                "rename one, or segment them into different --out folders"
            )
    depth = 0
    while len(set(stems)) < len(stems) and depth < 8:
        depth += 1
        counts = defaultdict(int)
        for s in stems:
            counts[s] += 1
        for i, p in enumerate(paths):
            if counts[stems[i]] > 1:
                parents = [q.name for q in list(p.parents)[:depth] if q.name][::-1]
                stems[i] = "_".join(parents + [_output_stem(p)])
    return stems


class _RecordIndex:
    """RECIST records grouped by image, looked up by path.

    A CSV written on another machine may name an image by another absolute or
    relative path: when the full path does not match, the last two path components
    (DeepLesion's ``<series>/<slice>.png``), then the file name are tried, when
    unambiguous.
    """

    def __init__(self, records: Iterable) -> None:
        self.by_path: dict[str, list[tuple[int, Recist]]] = defaultdict(list)
        for rec in records:
            self.by_path[_key(Path(rec.image))].append((int(rec.lesion), rec.recist))
        self.by_tail: dict[tuple[str, ...], list[str]] = defaultdict(list)
        for k in self.by_path:
            parts = Path(k).parts
            self.by_tail[parts[-2:]].append(k)
            self.by_tail[parts[-1:]].append(k)

    def get(self, path: Path) -> list[tuple[int, Recist]]:
        k = _key(path)
        if k in self.by_path:
            return self.by_path[k]
        parts = Path(k).parts
        for tail in (parts[-2:], parts[-1:]):
            cands = self.by_tail.get(tail, [])
            if len(cands) == 1:
                return self.by_path[cands[0]]
        return []


def plan_segment(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    recist_csv: str | os.PathLike[str] | None = None,
) -> tuple[list[SegmentItem], list[tuple[str, str]], list[Path]]:
    """Resolve inputs to images with their RECIST (see :func:`_plan`)."""
    items, failures, protect, _ = _plan(inputs, recist_csv=recist_csv)
    return items, failures, protect


def _plan(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    recist_csv: str | os.PathLike[str] | None = None,
) -> tuple[list[SegmentItem], list[tuple[str, str]], list[Path], list[Path]]:
    """Resolve inputs to images with their RECIST.

    Returns
    -------
    items : list of SegmentItem
    failures : list of (file, reason)
        Images without any RECIST.
    protect : list of Path
        Input folders that must not receive outputs (a dataset's images and masks).
    nested : list of Path
        Input folders scanned recursively: no output folder may lie inside them (the
        next run would take the outputs for inputs).

    Raises
    ------
    InputError
        If the inputs do not exist, or a file list comes without a RECIST CSV.
    """
    failures: list[tuple[str, str]] = []
    if isinstance(inputs, (str, os.PathLike)):
        inputs_list: list[Path] = [Path(inputs)]
    else:
        inputs_list = [Path(p) for p in inputs]
    if not inputs_list:
        raise InputError("no inputs given")

    if len(inputs_list) == 1 and inputs_list[0].is_dir() and not _named_series(inputs_list[0], recist_csv):
        return _plan_dataset(inputs_list[0], recist_csv, failures)
    return _plan_files(inputs_list, recist_csv, failures)


def _named_series(folder: Path, recist_csv: str | os.PathLike[str] | None) -> bool:
    """True when ``folder`` is a DICOM series that the RECIST CSV names as one image
    (``segment SERIES --recist CSV``): one volume, not a dataset of 2D slices."""
    if recist_csv is None or not Path(recist_csv).is_file() or not _is_dicom_dir(folder):
        return False
    records, _ = _read_records(Path(recist_csv))
    return _key(folder) in _RecordIndex(records).by_path


def _plan_dataset(
    folder: Path,
    recist_csv: str | os.PathLike[str] | None,
    failures: list[tuple[str, str]],
) -> tuple[list[SegmentItem], list[tuple[str, str]], list[Path], list[Path]]:
    """:func:`_plan` for one dataset folder (``failures`` is extended)."""
    dataset = scan_dataset(folder)
    protect = [d for d in (dataset.images_dir, dataset.masks_dir) if d is not None]
    # A flat dataset (images in the root) is not walked into subfolders.
    nested = [d for d in protect if d != dataset.root]
    deeplesion = False
    if recist_csv is not None:
        records, deeplesion = _read_records(Path(recist_csv))
        index = _RecordIndex(records)
        lesions_for = [index.get(item.image_path) for item in dataset.items]
    else:
        if dataset.recist_csv is None and dataset.dl_info is None and not dataset.has_masks:
            raise InputError(
                f"{dataset.root} has no recist.csv and no masks/ to derive RECIST "
                "from; pass --recist CSV"
            )
        deeplesion = dataset.recist_csv is None and dataset.dl_info is not None
        derived = dataset_recists(dataset)
        failures.extend(derived.failures)
        lesions_for = [
            [(int(r.lesion), r.recist) for r in derived.get(item.stem, [])]
            for item in dataset.items
        ]
    reported = {f for f, _ in failures}
    items = []
    for item, lesions in zip(dataset.items, lesions_for):
        if not lesions:
            if str(item.image_path) not in reported and str(item.mask_path) not in reported:
                failures.append((str(item.image_path), "no RECIST for this image"))
            continue
        lesions = sorted(lesions, key=lambda t: t[0])
        items.append(SegmentItem(item.image_path, item.stem, lesions, deeplesion))
    return items, failures, protect, nested


def _plan_files(
    inputs_list: list[Path],
    recist_csv: str | os.PathLike[str] | None,
    failures: list[tuple[str, str]],
) -> tuple[list[SegmentItem], list[tuple[str, str]], list[Path], list[Path]]:
    """:func:`_plan` for a list of image files (``failures`` is extended)."""
    for p in inputs_list:
        if p.is_dir() and not _is_dicom_dir(p):  # a series folder is one image
            raise InputError(
                f"{p} is a folder: give either one dataset folder or a list of image files"
            )
    if recist_csv is None:
        raise InputError("image files need a RECIST CSV: pass --recist CSV (or DL_info.csv)")
    records, deeplesion = _read_records(Path(recist_csv))
    index = _RecordIndex(records)
    stems = _unique_stems(inputs_list)
    items = []
    for path, stem in zip(inputs_list, stems):
        lesions = index.get(path)
        if not path.exists():
            failures.append((str(path), "file not found"))
            continue
        if not lesions:
            failures.append((str(path), f"no RECIST for this image in {recist_csv}"))
            continue
        items.append(SegmentItem(path, stem, sorted(lesions, key=lambda t: t[0]), deeplesion))
    return items, failures, [], []


def _check_collisions(items: Sequence[SegmentItem], out: Path) -> None:
    """Refuse two images that would write the same output name (``x.jpg`` and ``x.png``
    both write ``x.png``; ``a`` with several lesions writes ``a_labels``, as does an
    image ``a_labels``). Compared case-blind, as on macOS and Windows disks."""
    owner: dict[str, SegmentItem] = {}
    for item in items:
        names = [item.stem] + ([f"{item.stem}_labels"] if len(item.lesions) > 1 else [])
        for name in names:
            other = owner.setdefault(name.casefold(), item)
            if other is not item:
                raise InputError(
                    f"{other.image_path} and {item.image_path} would both be written as "
                    f"{name}.* in {out}; rename one, or segment them into different --out folders"
                )


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _check_out(
    out: Path,
    protect: Sequence[Path],
    items: Sequence[SegmentItem],
    nested: Sequence[Path] = (),
) -> None:
    """Refuse an output folder that holds inputs: an input mask is never overwritten,
    and outputs are never written where a later scan would take them for inputs."""
    out_key = _key(out)
    forbidden: set[str] = {_key(d) for d in protect}
    for item in items:
        forbidden.add(_key(item.image_path.parent))
        if item.image_path.is_dir():  # a DICOM series folder
            forbidden.add(_key(item.image_path))
        if item.image_path.parent.name == "images":
            forbidden.add(_key(item.image_path.parent.parent / "masks"))
    try:
        out_real = _key(out.resolve())
        forbidden |= {_key(Path(f).resolve()) for f in forbidden}
    except OSError:  # pragma: no cover - unresolvable paths: compare as given
        out_real = out_key
    if out_key in forbidden or out_real in forbidden:
        raise InputError(
            f"refusing to write into {out}: it holds input images or masks; choose another --out"
        )
    for d in nested:
        for folder in {_key(d), _key(d.resolve())}:
            if _inside(out_key, folder) or _inside(out_real, folder):
                raise InputError(
                    f"refusing to write into {out}: it is inside the input folder {d}, whose "
                    "next scan would take the outputs for inputs; choose another --out"
                )


def _candidate_names(item: SegmentItem) -> list[str]:
    """Output names ``item`` may write (2D or volume: known only once it is read)."""
    stems = [item.stem] + ([f"{item.stem}_labels"] if len(item.lesions) > 1 else [])
    return [f"{s}{ext}" for s in stems for ext in (".png", ".nii.gz")]


def _claim_outputs(out: Path, todo: Sequence[SegmentItem], overwrite: bool) -> set[str]:
    """Refuse files in ``out`` the tool did not write and would replace (unless
    ``overwrite``); then record every name this run may write in the manifest."""
    ours = outdir.load_manifest(out)
    names = [MEASUREMENTS_CSV, FAILURES_CSV] + [n for it in todo for n in _candidate_names(it)]
    foreign = [n for n in names if n not in ours and os.path.lexists(out / n)]
    if foreign and not overwrite:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise InputError(
            f"{out} already holds {foreign[0]}{more}, which recist-seg did not write; move "
            "it away, choose another --out, or pass --overwrite to replace it"
        )
    return outdir.claim(out, ours, names)
