"""Autosave and restore of the annotator's work: nothing a user drew is lost to a crash.

While the annotator is bound to an image, the dock writes a *recovery entry* for it a
moment after each change: the RECIST CSV (with its ``status`` column), the label image
and a small ``entry.json`` (image path, shape, content key, time, lesion count). When
the same image is bound again (a new viewer after a crash, or after closing without
exporting) and the entry holds lesions the layers do not, the dock offers to restore it.

The folder is ``$RECIST_SEG_RECOVERY_DIR``, else ``$XDG_CACHE_HOME`` (or
``~/.cache``) ``/napari-recist-seg/recovery``, with one sub-folder per image content
key. Each file is written atomically (:mod:`napari_recist_seg.data.atomic`) and
``entry.json`` last, so a reader sees the previous complete entry or the new one's
files under the old JSON (never a half-written file). An explicit export does not
delete the entry (a later crash must still be recoverable); entries older than
:data:`MAX_AGE_DAYS` are removed when the dock starts.

Pure Python over numpy: the dock takes a :class:`Snapshot` in the GUI thread (cheap:
records and a copy of the labels) and writes it with :func:`write_snapshot` in a worker
thread, so the viewer never waits on the disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from napari_recist_seg.annotation.export import session_records
from napari_recist_seg.annotation.session import AnnotationSession
from napari_recist_seg.data import RecistRecord, read_labels, read_recist_csv, write_labels, write_recist_csv
from napari_recist_seg.data.atomic import atomic_write_text

__all__ = [
    "ENV_VAR",
    "MAX_AGE_DAYS",
    "RecoveryEntry",
    "Snapshot",
    "image_key",
    "missing_lesions",
    "read_entry",
    "recovery_root",
    "remove_old_entries",
    "snapshot",
    "write_snapshot",
]

#: Overrides the recovery folder (tests, shared machines, a disk with room).
ENV_VAR = "RECIST_SEG_RECOVERY_DIR"
#: Entries not written for this long are removed when the dock starts.
MAX_AGE_DAYS = 30
# The content key hashes this much of the image's bytes: enough to tell two images
# apart, cheap on a CT volume (the shape and path go in too).
KEY_BYTES = 1 << 20
ENTRY_JSON = "entry.json"
RECIST_CSV = "recist.csv"
# TIFF: uncompressed (fast), 2D and 3D, label ids above 65535 kept (write_labels).
LABELS_FILE = "labels.tif"
# Marks an entry.json as ours: only such entries are ever removed (the folder may be one
# a user chose with RECIST_SEG_RECOVERY_DIR, holding their own files).
WRITTEN_BY = "napari-recist-seg recovery"


def recovery_root(environ: Mapping[str, str] | None = None) -> Path:
    """The folder that holds the recovery entries (see the module docstring).

    >>> recovery_root({"RECIST_SEG_RECOVERY_DIR": "/tmp/rec"}).as_posix()
    '/tmp/rec'
    >>> recovery_root({"XDG_CACHE_HOME": "/c"}).as_posix()
    '/c/napari-recist-seg/recovery'
    """
    env = os.environ if environ is None else environ
    if env.get(ENV_VAR):
        return Path(env[ENV_VAR]).expanduser()
    cache = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "napari-recist-seg" / "recovery"


def image_key(image: Any, image_path: str | os.PathLike[str] | None, name: str) -> str:
    """A short content key of an image: sha1 of its first MB, its shape, dtype and path.

    ``name`` (the layer's) stands in for the path of an image that exists only in memory.

    >>> a = np.zeros((4, 4), np.uint8)
    >>> image_key(a, None, "x") == image_key(a.copy(), None, "x") != image_key(a + 1, None, "x")
    True
    """
    arr = np.asarray(image)
    flat = arr.reshape(-1)
    head = np.ascontiguousarray(flat[: max(1, KEY_BYTES // max(arr.itemsize, 1))]).tobytes()
    digest = hashlib.sha1(head)
    where = str(Path(image_path).resolve()) if image_path is not None else f"memory:{name}"
    digest.update(f"|{arr.shape}|{arr.dtype}|{where}".encode())
    return digest.hexdigest()[:16]


@dataclass
class Snapshot:
    """What one autosave writes, taken in the GUI thread (the session keeps changing)."""

    key: str
    records: list[RecistRecord]
    labels: np.ndarray
    meta: dict[str, Any]


def snapshot(
    key: str,
    session: AnnotationSession,
    labels: Any,
    image_path: str | os.PathLike[str] | None,
    name: str,
    *,
    now: float | None = None,
    copy_labels: bool = True,
) -> Snapshot:
    """The session's complete lesions (with their status) and a copy of the labels.

    ``copy_labels=False`` keeps a reference: the writer reads the live array (a full
    CT's 100 MB copy costs ~120 ms, too long for the GUI thread). A stroke painted
    during that read may be half in the entry; the stroke's own autosave follows.
    """
    lab = np.array(labels, copy=True) if copy_labels else np.asarray(labels)
    # The CSV's image column: the file, else the layer's name (an in-memory image).
    image_ref = Path(image_path) if image_path is not None else Path(name)
    records = session_records(session, image_ref)
    meta = {
        "image_path": None if image_path is None else str(image_path),
        "name": name,
        "shape": list(lab.shape),
        "key": key,
        "written_by": WRITTEN_BY,
        "saved_at": time.time() if now is None else float(now),
        "n_lesions": len(records),
    }
    return Snapshot(key, records, lab, meta)


def write_snapshot(root: str | os.PathLike[str], snap: Snapshot) -> Path:
    """Write one entry (labels, CSV, then ``entry.json``); returns its folder.

    Labels first: a write stopped half-way leaves new labels under old rows (a lesion's
    mask without its row is never restored), not new rows over old labels. Raises
    ``OSError`` (read-only or full disk) like any write: the caller warns.
    """
    folder = Path(root) / snap.key
    folder.mkdir(parents=True, exist_ok=True)
    write_labels(folder / LABELS_FILE, snap.labels)
    csv_path = folder / RECIST_CSV
    if snap.records:
        write_recist_csv(csv_path, snap.records)
    else:  # every lesion deleted: the entry says so (nothing to offer)
        with contextlib.suppress(FileNotFoundError):
            csv_path.unlink()
    atomic_write_text(folder / ENTRY_JSON, json.dumps(snap.meta, indent=1))
    return folder


@dataclass
class RecoveryEntry:
    """A recovery entry read back: its records, labels and when it was saved."""

    folder: Path
    meta: dict[str, Any]
    records: list[RecistRecord]
    labels: np.ndarray | None

    @property
    def saved_at(self) -> float:
        return float(self.meta.get("saved_at", 0.0))

    @property
    def saved_hhmm(self) -> str:
        """Local time of the save, ``HH:MM``."""
        return time.strftime("%H:%M", time.localtime(self.saved_at))


def read_entry(root: str | os.PathLike[str], key: str, shape: Sequence[int]) -> RecoveryEntry | None:
    """The entry for ``key`` if there is a readable one for an image of ``shape``, else ``None``."""
    folder = Path(root) / key
    try:
        meta = json.loads((folder / ENTRY_JSON).read_text(encoding="utf-8"))
        if [int(v) for v in meta.get("shape", [])] != [int(v) for v in shape]:
            return None
        csv_path = folder / RECIST_CSV
        records = read_recist_csv(csv_path) if csv_path.exists() else []
        labels = read_labels(folder / LABELS_FILE) if (folder / LABELS_FILE).exists() else None
    except (OSError, ValueError):  # missing, half-deleted or foreign: nothing to offer
        return None
    if labels is not None and tuple(labels.shape) != tuple(int(v) for v in shape):
        labels = None
    return RecoveryEntry(folder, meta, list(records), labels)


def missing_lesions(entry: RecoveryEntry, session: AnnotationSession) -> list[RecistRecord]:
    """The entry's lesions that the session does not hold (same slice and long axis)."""
    def held(rec: RecistRecord) -> bool:
        for les in session.lesions.values():
            r = les.recist
            if (r is not None and r.slice_index == rec.recist.slice_index
                    and np.allclose(r.long_axis, rec.recist.long_axis, atol=0.5)):
                return True
        return False

    return [rec for rec in entry.records if not held(rec)]


def unrestored_edits(entry: RecoveryEntry, session: AnnotationSession) -> list[RecistRecord]:
    """The entry's hand-edited lesions (status ``+edited``) that the session holds with
    the same id and lines but not as edited: their painted masks are only in the entry
    (the image reopened from its exported CSV, say, after the edits)."""
    out = []
    for rec in entry.records:
        les = session.lesions.get(int(rec.lesion))
        r = None if les is None else les.recist
        if ("+edited" in (rec.status or "") and r is not None and not les.edited
                and r.slice_index == rec.recist.slice_index
                and np.allclose(r.long_axis, rec.recist.long_axis, atol=0.5)):
            out.append(rec)
    return out


def remove_old_entries(
    root: str | os.PathLike[str], *, max_age_days: float = MAX_AGE_DAYS, now: float | None = None
) -> int:
    """Remove the entries whose ``entry.json`` is older than ``max_age_days``; returns how many.

    Only folders that are wholly an entry of ours go: named by their key, with an
    ``entry.json`` we wrote (:data:`WRITTEN_BY`, the same key) and nothing but our files.
    Folders without an ``entry.json`` (an autosave may be writing one), and anything
    else a user keeps under ``root``, are left alone.
    """
    limit = (time.time() if now is None else now) - max_age_days * 86400.0
    removed = 0
    try:
        folders = [p for p in Path(root).iterdir() if p.is_dir()]
    except OSError:
        return 0
    for folder in folders:
        try:
            if (folder / ENTRY_JSON).stat().st_mtime < limit and _only_ours(folder):
                shutil.rmtree(folder)
                removed += 1
        except (OSError, ValueError):
            continue
    return removed


def _only_ours(folder: Path) -> bool:
    meta = json.loads((folder / ENTRY_JSON).read_text(encoding="utf-8"))
    if not isinstance(meta, dict) or meta.get("written_by") != WRITTEN_BY or meta.get("key") != folder.name:
        return False
    ours = {ENTRY_JSON, RECIST_CSV, LABELS_FILE}
    # (an interrupted atomic write leaves a hidden ".<name>.~part-*" file of ours)
    return all(p.is_file() and (p.name in ours or (p.name.startswith(".") and ".~part-" in p.name))
               for p in folder.iterdir())
