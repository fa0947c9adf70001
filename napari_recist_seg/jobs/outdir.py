"""An output folder that a bulk job owns: lock, manifest, per-image records.

A bulk job (``recist-seg segment``) writes into ``OUT`` and keeps its bookkeeping in
``OUT/.recist-seg/``:

- ``lock``: created with ``O_EXCL`` holding the writer's pid; a second run on the same
  folder refuses (one line, exit 2) while that pid is alive, and takes over a lock
  whose process is gone (a kill -9 leaves it behind);
- ``manifest.json``: every output name the tool has claimed in ``OUT``, written
  *before* those files are, so a later run can tell its own files (even those of a
  killed run) from files a user put there, which are never overwritten or deleted
  without ``--overwrite``;
- ``journal.jsonl`` (``recist-seg segment``): one JSON line per committed image (its
  output files and its measurement rows), appended after its masks, and a ``drop``
  line before an image's masks are rewritten (``--overwrite``). One append-only file
  instead of one record file per image: creating a file costs more CPU than encoding
  a mask. The last line per stem wins; a torn last line (a crash or full disk mid
  write) is ignored and cut off by the next run (:class:`Journal`) before it appends;
- ``records/<stem>.json``: the same record as its own file, written atomically
  (``recist-seg segment3d``, and runs of earlier versions, which are still read).

The tables (``measurements.csv``) are rebuilt from the records, so a crash at any
moment leaves a state from which a re-run produces exactly the outputs of a clean run.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterable

from napari_recist_seg.data.atomic import atomic_write_text, remove_stale_temps
from napari_recist_seg.data.complete import file_complete
from napari_recist_seg.jobs.common import InputError

__all__ = [
    "STATE_DIR",
    "Journal",
    "OutputWriteError",
    "OutputLock",
    "claim",
    "load_manifest",
    "open_journal",
    "prepare_out",
    "read_records",
    "write_record",
]

STATE_DIR = ".recist-seg"
_MANIFEST = "manifest.json"
_RECORDS = "records"
_JOURNAL = "journal.jsonl"
_LOCK = "lock"
# The journal is fsync'd at most this often (and when closed): a power cut loses at
# most the last few seconds of records (those images are redone), never the file.
_JOURNAL_FSYNC_SECONDS = 2.0
# A journal is rewritten with its live records alone once it holds twice as many
# lines, and this many more.
_COMPACT_SLACK = 256


class OutputWriteError(InputError):
    """The output folder cannot take more writes (full disk, read-only, no permission):
    the run stops with one line; what was committed is kept and a re-run resumes."""


def describe_os_error(exc: OSError) -> str:
    """``strerror`` of an OS error without the errno and path noise."""
    return exc.strerror or errno.errorcode.get(exc.errno or 0, "") or str(exc)


def state_dir(out: Path) -> Path:
    return out / STATE_DIR


def prepare_out(out: Path, *, state: bool = True) -> None:
    """Create ``out`` (and its state folder), with one-line errors for what cannot be.

    Raises
    ------
    InputError
        ``out`` is a file, or cannot be created / written (read-only, no permission,
        full disk).
    """
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file, not a folder; choose a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        if state:
            (state_dir(out) / _RECORDS).mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise InputError(f"cannot create output folder {out}: a file is in the way") from None
    except OSError as exc:
        raise InputError(f"cannot write into {out}: {describe_os_error(exc)}") from None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    except OSError:  # pragma: no cover - e.g. Windows: assume alive (safe side)
        return True
    return True


class OutputLock:
    """``OUT/.recist-seg/lock`` for the duration of a ``with`` block (see module notes).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()); prepare_out(d)
    >>> with OutputLock(d):
    ...     try:
    ...         OutputLock(d).__enter__()
    ...     except InputError as exc:
    ...         print(str(exc).startswith("another recist-seg run"))
    True
    """

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.path = state_dir(self.out) / _LOCK
        self._mine = f"{os.getpid()} {socket.gethostname()}\n"

    def _try_create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:
            raise InputError(f"cannot write into {self.out}: {describe_os_error(exc)}") from None
        try:
            os.write(fd, self._mine.encode())
        finally:
            os.close(fd)
        return True

    def __enter__(self) -> "OutputLock":
        for _ in range(3):
            if self._try_create():
                return self
            try:
                text = self.path.read_text(encoding="utf-8", errors="replace")
            except FileNotFoundError:
                continue  # released meanwhile: try again
            parts = text.split()
            pid = int(parts[0]) if parts and parts[0].isdigit() else -1
            host = parts[1] if len(parts) > 1 else ""
            if host == socket.gethostname() and not _pid_alive(pid):
                # The previous run was killed: its lock is stale.
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
                continue
            raise InputError(
                f"another recist-seg run (pid {pid}) is writing into {self.out}; wait for it "
                f"to finish, or choose another --out (if no run is active, delete {self.path})"
            )
        raise InputError(f"cannot lock {self.out}: {self.path} keeps reappearing")

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            if self.path.read_text(encoding="utf-8") == self._mine:
                self.path.unlink()


def clean_temps(out: Path, subfolders: Iterable[str] = ()) -> None:
    """Remove temporary files of killed runs (call while holding the lock)."""
    for folder in (out, state_dir(out), state_dir(out) / _RECORDS, *(out / s for s in subfolders)):
        remove_stale_temps(folder)


def load_manifest(out: Path) -> set[str]:
    """Names (relative to ``out``) the tool has claimed; unreadable = none."""
    try:
        data = json.loads((state_dir(out) / _MANIFEST).read_text(encoding="utf-8"))
        return {str(n) for n in data.get("files", [])}
    except (OSError, ValueError, AttributeError, TypeError):
        return set()


def claim(out: Path, known: set[str], names: Iterable[str]) -> set[str]:
    """Add ``names`` to the manifest (written before the files themselves)."""
    new = set(known) | set(names)
    if new != known or not (state_dir(out) / _MANIFEST).exists():
        text = json.dumps({"files": sorted(new)}, indent=0)
        try:
            atomic_write_text(state_dir(out) / _MANIFEST, text)
        except OSError as exc:
            raise InputError(f"cannot write into {out}: {describe_os_error(exc)}") from None
    return new


def _record_path(out: Path, stem: str) -> Path:
    return state_dir(out) / _RECORDS / f"{stem}.json"


class Journal:
    """``OUT/.recist-seg/journal.jsonl``, opened for appending records (see the module
    notes); call while holding the lock, :meth:`close` at the end of the run.

    Opening repairs a torn last line (a crash or a full disk mid-append): the file is
    cut back to its last complete line, so that the next line starts on a line of
    its own. ``known`` are the stems whose last journal line is a record;
    ``files`` those with a ``records/<stem>.json`` file.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()); prepare_out(d)
    >>> j = Journal(d)
    >>> write_record(d, "a", ["a.png"], [{"lesion": "1"}], journal=j); j.close()
    >>> with open(d / ".recist-seg" / "journal.jsonl", "ab") as fh:
    ...     _ = fh.write(b'{"stem": "b", "outp')  # a crash mid-append
    >>> sorted(read_records(d)), open_journal(d)[1].close()
    (['a'], None)
    >>> (d / ".recist-seg" / "journal.jsonl").read_bytes().endswith(b"]}\\n")
    True
    """

    def __init__(self, out: Path, known: set[str] | None = None,
                 files: set[str] | None = None) -> None:
        self.out = Path(out)
        self.path = state_dir(self.out) / _JOURNAL
        self.known = set(known or ())
        self.files = set(files or ())
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        self._synced = time.monotonic()
        self._dirty = False
        try:
            self._repair()
        except BaseException:
            os.close(self._fd)
            raise

    def _repair(self) -> None:
        size = os.fstat(self._fd).st_size
        if size == 0:
            return
        # Only the tail can be torn: read back far enough to find the last newline.
        back = min(size, 1 << 16)
        while True:
            tail = os.pread(self._fd, back, size - back)
            cut = tail.rfind(b"\n")
            if cut >= 0 or back == size:
                break
            back = min(size, back * 4)
        keep = size - back + cut + 1  # 0 when no line is complete
        if keep < size:
            os.ftruncate(self._fd, keep)

    def append(self, entry: dict) -> None:
        """One line, one ``write``; on a short write the file is cut back to its
        previous end (else the next run does it) and the error raised."""
        data = _line(entry).encode("utf-8")
        end = os.fstat(self._fd).st_size  # one writer: the lock is held
        try:
            if os.write(self._fd, data) != len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, end)
            raise
        self._dirty = True
        if time.monotonic() - self._synced > _JOURNAL_FSYNC_SECONDS:
            self.sync()

    def sync(self) -> None:
        if self._dirty:
            os.fsync(self._fd)
            self._dirty = False
        self._synced = time.monotonic()

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Sync and close (the records of a run that stops are kept)."""
        if self._fd < 0:
            return
        try:
            with contextlib.suppress(OSError):
                self.sync()
        finally:
            os.close(self._fd)
            self._fd = -1


def _line(entry: dict) -> str:
    return json.dumps(entry, separators=(",", ":")) + "\n"


def write_record(out: Path, stem: str, outputs: list[str], rows: list[dict[str, str]],
                 journal: Journal | None = None, prompts: str | None = None) -> None:
    """Commit one image: its output file names and its (formatted) measurement rows;
    a line of ``journal``, else its own file. ``prompts``: a digest of the RECIST the
    outputs were made from (kept in the record, so a re-run can tell they changed)."""
    entry: dict = {"stem": stem, "outputs": outputs, "rows": rows}
    if prompts is not None:
        entry["prompts"] = prompts
    if journal is not None:
        journal.append(entry)
        journal.known.add(stem)
        return
    text = json.dumps(entry, indent=0)
    atomic_write_text(_record_path(out, stem), text)


def remove_record(out: Path, stem: str, journal: Journal | None = None) -> None:
    """Un-commit ``stem`` (before its masks are rewritten): a ``drop`` line in
    ``journal`` if a line vouches for it, and its record file if it has one (with a
    journal: only then, no system call for the rest)."""
    if journal is not None:
        if stem in journal.known:
            journal.append({"stem": stem, "drop": True})
            journal.known.discard(stem)
        if stem not in journal.files:
            return
        journal.files.discard(stem)
    with contextlib.suppress(FileNotFoundError):
        _record_path(out, stem).unlink()


def _parse_record(rec: object) -> tuple[str, dict | None]:
    """``(stem, record)`` of a stored record, ``record`` None for a ``drop`` line."""
    stem = str(rec["stem"])  # type: ignore[index]
    if rec.get("drop"):  # type: ignore[union-attr]
        return stem, None
    outputs = [str(n) for n in rec["outputs"]]  # type: ignore[index]
    rows = [{str(k): str(v) for k, v in row.items()} for row in rec["rows"]]  # type: ignore[index]
    parsed: dict = {"outputs": outputs, "rows": rows}
    if "prompts" in rec:  # type: ignore[operator]
        parsed["prompts"] = str(rec["prompts"])  # type: ignore[index]
    return stem, parsed


def read_record_files(out: Path) -> dict[str, dict]:
    """``{stem: record}`` of the ``records/<stem>.json`` files alone."""
    records: dict[str, dict] = {}
    folder = state_dir(out) / _RECORDS
    if not folder.is_dir():
        return records
    for p in sorted(folder.glob("*.json")):
        if p.name.startswith("."):
            continue
        try:
            stem, rec = _parse_record(json.loads(p.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        if rec is not None:
            records[stem] = rec
    return records


def open_journal(out: Path) -> tuple[dict[str, dict], Journal]:
    """Every committed image's record (:func:`read_records`) and the journal, repaired
    and open for appending (call while holding the lock)."""
    files = read_record_files(out)
    entries = _journal_entries(out)
    records = _replay(files, entries)
    # The stems a drop line must un-commit: those whose last journal entry is a record.
    live = _replay({}, entries)
    try:
        if len(entries) > 2 * len(live) + _COMPACT_SLACK:
            # Runs with --overwrite append two lines per image: keep the live ones.
            atomic_write_text(state_dir(out) / _JOURNAL, "".join(
                _line({"stem": stem, **rec}) for stem, rec in live.items()))
        return records, Journal(out, set(live), set(files))
    except OSError as exc:
        raise OutputWriteError(f"cannot write into {out}: {describe_os_error(exc)}") from None


def _journal_entries(out: Path) -> list[tuple[str, dict | None]]:
    """The journal's readable lines in order; a torn or unreadable line is left out."""
    try:
        data = (state_dir(out) / _JOURNAL).read_bytes()
    except OSError:
        return []
    entries = []
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            entries.append(_parse_record(json.loads(line)))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return entries


def _replay(files: dict[str, dict], entries: list[tuple[str, dict | None]]) -> dict[str, dict]:
    records = dict(files)
    for stem, rec in entries:
        if rec is None:
            records.pop(stem, None)
        else:
            records[stem] = rec
    return records


def read_records(out: Path) -> dict[str, dict]:
    """``{stem: record}`` of every committed image: the record files, then the
    journal's lines in order (the last per stem wins, a ``drop`` removes it).
    Unreadable records and lines, a torn last line among them, are ignored (their
    images are redone)."""
    return _replay(read_record_files(out), _journal_entries(out))


def committed(out: Path, record: dict | None) -> bool:
    """True when a record exists and all the files it names are whole
    (:func:`~napari_recist_seg.data.complete.file_complete`: a power cut can leave a
    renamed file empty or cut short, since outputs are not fsync'd)."""
    if record is None:
        return False
    return all(file_complete(out / name) for name in record["outputs"])
