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
- ``records/<stem>.json``: one image's committed result (its output files and its
  measurement rows), written atomically after its masks. The tables
  (``measurements.csv``) are rebuilt from the records, so a crash at any moment
  leaves a state from which a re-run produces exactly the outputs of a clean run.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
from pathlib import Path
from typing import Iterable

from napari_recist_seg.data.atomic import atomic_write_text, remove_stale_temps
from napari_recist_seg.jobs.common import InputError

__all__ = [
    "STATE_DIR",
    "OutputWriteError",
    "OutputLock",
    "claim",
    "load_manifest",
    "prepare_out",
    "read_records",
    "write_record",
]

STATE_DIR = ".recist-seg"
_MANIFEST = "manifest.json"
_RECORDS = "records"
_LOCK = "lock"


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


def write_record(out: Path, stem: str, outputs: list[str], rows: list[dict[str, str]]) -> None:
    """Commit one image: its output file names and its (formatted) measurement rows."""
    text = json.dumps({"stem": stem, "outputs": outputs, "rows": rows}, indent=0)
    atomic_write_text(_record_path(out, stem), text)


def remove_record(out: Path, stem: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        _record_path(out, stem).unlink()


def read_records(out: Path) -> dict[str, dict]:
    """``{stem: record}`` of every committed image; unreadable records are ignored
    (their images are redone)."""
    records: dict[str, dict] = {}
    folder = state_dir(out) / _RECORDS
    if not folder.is_dir():
        return records
    for p in sorted(folder.glob("*.json")):
        if p.name.startswith("."):
            continue
        try:
            rec = json.loads(p.read_text(encoding="utf-8"))
            stem = str(rec["stem"])
            outputs = [str(n) for n in rec["outputs"]]
            rows = [{str(k): str(v) for k, v in row.items()} for row in rec["rows"]]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        records[stem] = {"outputs": outputs, "rows": rows}
    return records


def committed(out: Path, record: dict | None) -> bool:
    """True when a record exists and all the files it names exist."""
    return record is not None and all((out / n).is_file() for n in record["outputs"])
