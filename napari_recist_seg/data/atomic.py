"""Atomic file writing: a crash never leaves a half-written output behind."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator

# Temporary files are named ``.<base>.~part-XXXXXXXX<suffixes>``: hidden (readers skip
# them) and recognisable, so a run that holds its output folder's lock can remove the
# leftovers of a run that was killed mid-write (see :func:`remove_stale_temps`).
TEMP_MARK = ".~part-"
_TEMP_RE = re.compile(r"^\..*" + re.escape(TEMP_MARK) + r"[A-Za-z0-9_]{8}")


def _umask() -> int:
    """The process umask, read without changing it where the OS allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    old = os.umask(0o022)  # fallback: racy only if another thread sets the umask too
    os.umask(old)
    return old


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    The temporary file keeps ``path``'s suffixes (writers choose the format from
    them). On an exception the temporary file is removed and ``path`` is untouched.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> with atomic_path(d / "a.txt") as tmp:
    ...     _ = tmp.write_text("done")
    >>> (d / "a.txt").read_text()
    'done'
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp_name = _mkstemp(target)
    except OSError as exc:
        raise _write_error(target, exc) from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, _mode_for(target))
        os.replace(tmp, target)
    except BaseException as exc:
        # (judged before the temporary file goes: it holds the space that ran out)
        error = _write_error(target, exc) if isinstance(exc, Exception) else exc
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if error is exc:
            raise
        raise error from exc


def _write_error(target: Path, exc: Exception) -> Exception:
    """The error a user should read for a failed write of ``target``: an ``OSError``
    naming ``target`` (not the hidden temporary file), and "No space left on device"
    where a writer library reported a short write on a full disk in its own words
    ("1440000 requested and 65280 written"); any other error as it was."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return OSError(exc.errno, exc.strerror or str(exc), str(target))
    if isinstance(exc, OSError) or "written" in str(exc):
        with contextlib.suppress(OSError):
            if os.statvfs(target.parent).f_bavail == 0:
                return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
    return exc


def _mkstemp(target: Path) -> tuple[int, str]:
    suffix = "".join(target.suffixes) or ".tmp"
    return tempfile.mkstemp(
        prefix=f".{target.name.split('.')[0]}{TEMP_MARK}", suffix=suffix, dir=target.parent
    )


def _mode_for(target: Path) -> int:
    """mkstemp creates 0600 files; outputs get the permissions a plain open() would
    give (or keep those of the file they replace)."""
    try:
        return os.stat(target).st_mode & 0o777
    except FileNotFoundError:
        return 0o666 & ~_umask()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes | memoryview) -> None:
    """Write ``data`` to ``path`` atomically, through the temporary file's descriptor
    (no second open by name: the bulk job writes one of these per image).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> atomic_write_bytes(d / "sub" / "a.bin", b"done"); (d / "sub" / "a.bin").read_bytes()
    b'done'
    """
    target = Path(path)
    try:
        fd, tmp_name = _mkstemp(target)
    except FileNotFoundError:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = _mkstemp(target)
    try:
        try:
            os.fchmod(fd, _mode_for(target))
            view = memoryview(data).cast("B")
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def is_temp_name(name: str) -> bool:
    """True for the name of a temporary file made by :func:`atomic_path`.

    >>> is_temp_name(".case1.~part-ab12cd34.png"), is_temp_name(".hidden.png")
    (True, False)
    """
    return bool(_TEMP_RE.match(name))


def remove_stale_temps(folder: str | os.PathLike[str]) -> int:
    """Remove the temporary files :func:`atomic_path` left in ``folder`` (not below).

    Only safe while no other writer uses ``folder`` (the bulk jobs hold its lock):
    a kill -9 or power cut mid-write leaves such files behind. Returns how many were
    removed.
    """
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return 0
    for entry in entries:
        if is_temp_name(entry.name) and entry.is_file(follow_symlinks=False):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed += 1
    return removed
