"""Bulk jobs as a small pipeline: read ahead, infer in chunks, write behind.

The serial bulk loop reads a chunk of images, segments all their lesions in shared
forward passes, then writes each image's outputs; the cores idle on the network while
a JPEG is decoded or a PNG encoded. :func:`run_pipelined` overlaps the three:

- one reader thread loads the next images (at most ``read_ahead`` in flight);
- the calling thread groups loaded images into chunks and hands each to one of
  ``segmenters`` threads (default 2): while one chunk is in the network (ONNX
  Runtime, like Pillow's codecs and OpenCV, releases the GIL) the next one is
  prepared or post-processed in Python, so both cores work;
- one writer thread commits images in order (masks, then the record) while later
  chunks are being segmented; at most one chunk's commits wait for it.

What a caller sees is the serial loop's: the same calls of ``failed`` and ``done`` in
the same order (so ``failures.csv`` and the tables are byte-identical), each image
committed on its own and reported right after (``done`` / ``failed`` of written images
run in the writer thread, never at the same time as the caller's own calls), cancel
honoured between images, and a fatal error (full disk) stopping the writer before
the next image. Memory holds at most ``segmenters + 2`` chunks (the one read ahead,
those being segmented, the one being written).

The module knows nothing about segmentation: the job passes its steps as callables
(``segment`` must be safe to call from two threads at once).
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from threading import Event
from typing import Any, Callable, Sequence

__all__ = ["FailureLog", "Steps", "run_pipelined"]


@dataclass
class FailureLog:
    """Stands in for a report while an item is read in the reader thread: its
    ``fail`` calls are kept and replayed on the real report in the serial order."""

    calls: list[tuple[Any, str]] = field(default_factory=list)

    def fail(self, file: Any, reason: str) -> None:
        self.calls.append((file, reason))


@dataclass
class Steps:
    """The job's steps (see :func:`run_pipelined`)."""

    load: Callable[[Any, FailureLog], Any]  # item, log -> loaded (has ``.item``)
    lesions: Callable[[Any], int]  # item -> lesions it lists (before reading)
    weight: Callable[[Any], tuple[int, int]]  # loaded -> (usable lesions, bytes)
    segment: Callable[[list[Any]], list[Any]]  # chunk -> result or exception each
    commit: Callable[[Any, Any], Any]  # loaded, result -> value (writer thread)
    done: Callable[[Any, Any], None]  # loaded, value: bookkeeping (writer thread)
    failed: Callable[[Any, BaseException], None]  # item, error
    replay: Callable[[tuple[Any, str]], None]  # one kept ``fail`` call
    cancelled: Callable[[], bool]  # checked between images; True stops the run
    tick: Callable[[], None] = lambda: None  # after each chunk (e.g. flush a table)
    fatal: tuple[type[BaseException], ...] = (MemoryError, KeyboardInterrupt)


def _read(steps: Steps, item: Any) -> tuple[FailureLog, Any, BaseException | None]:
    log = FailureLog()
    try:
        return log, steps.load(item, log), None
    except Exception as exc:  # noqa: BLE001 - one bad file never stops the run
        return log, None, exc


class _Pipeline:
    """The state of one :func:`run_pipelined` call (two threads, two queues)."""

    def __init__(self, todo: Sequence[Any], steps: Steps, ahead: int) -> None:
        self.todo, self.steps, self.ahead = todo, steps, ahead
        self.stop = Event()  # set on a fatal error / exit: queued commits do not run
        self.reader = ThreadPoolExecutor(1, thread_name_prefix="recist-read")
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="recist-write")
        self.reads: deque[tuple[Any, Future]] = deque()
        self.writes: deque[Future] = deque()
        self.nxt = 0
        self.cancelled = False

    def read_more(self) -> None:
        while self.nxt < len(self.todo) and len(self.reads) < self.ahead:
            item = self.todo[self.nxt]
            self.reads.append((item, self.reader.submit(_read, self.steps, item)))
            self.nxt += 1

    def _write(self, loaded: Any, result: Any) -> None:
        """One image in the writer thread, as the serial loop does it: cancel checked
        first, then its failure or its commit, then its bookkeeping (so progress is
        reported, and a cancel seen, right after each image)."""
        steps = self.steps
        if self.stop.is_set():
            return
        if steps.cancelled():
            self.stop.set()  # the rest stays unwritten; a later run resumes
            return
        if isinstance(result, BaseException):
            steps.failed(loaded.item, result)
            return
        try:
            value = steps.commit(loaded, result)
        except steps.fatal:
            self.stop.set()
            raise
        except Exception as exc:  # noqa: BLE001 - reported per file
            steps.failed(loaded.item, exc)
            return
        steps.done(loaded, value)

    def chunk(self, limits: tuple[int, int, int]) -> tuple[list[Any], list[Callable[[], None]]]:
        """The next chunk by the serial loop's rule, and its items' read failures."""
        steps, (max_lesions, max_images, max_bytes) = self.steps, limits
        chunk: list[Any] = []
        events: list[Callable[[], None]] = []
        n_lesions = n_bytes = 0
        while self.reads:
            if steps.cancelled():
                self.cancelled = True
                break
            item, fut = self.reads[0]
            if chunk and (n_lesions + steps.lesions(item) > max_lesions
                          or n_bytes >= max_bytes or len(chunk) >= max_images):
                break
            self.reads.popleft()
            self.read_more()
            log, loaded, error = fut.result()
            events.extend(lambda c=c: steps.replay(c) for c in log.calls)
            if isinstance(error, steps.fatal):
                raise error
            if error is not None:
                events.append(lambda i=item, e=error: steps.failed(i, e))
                continue
            chunk.append(loaded)
            lesions, size = steps.weight(loaded)
            n_lesions += lesions
            n_bytes += size
        return chunk, events

    def submit(self, chunk: list[Any], results: list[Any]) -> None:
        """Queue the chunk's images for the writer, in order."""
        for loaded, result in zip(chunk, results):
            self.writes.append(self.writer.submit(self._write, loaded, result))

    def drain(self) -> None:
        """Wait for the queued images (re-raises what stopped the writer)."""
        while self.writes:
            self.writes.popleft().result()

    def close(self) -> None:
        """Unread items are dropped, queued images are not written, and an image
        being written is finished before this returns."""
        self.stop.set()
        for _, fut in self.reads:
            fut.cancel()
        self.reader.shutdown(wait=True)
        self.writer.shutdown(wait=True)


def run_pipelined(
    todo: Sequence[Any],
    steps: Steps,
    *,
    max_lesions: int,
    max_images: int,
    max_bytes: int,
    read_ahead: int | None = None,
    segmenters: int = 2,
) -> None:
    """Run ``todo`` through load -> segment (chunks) -> commit, overlapped.

    Parameters
    ----------
    todo : sequence
        The items, in output order.
    steps : Steps
        ``load`` raises for an unreadable item (then ``failed(item, exc)``);
        ``segment`` returns one result or exception per loaded item of a chunk;
        ``commit`` raises ``steps.fatal`` to stop the run, anything else fails the
        image; ``done`` is called for each committed image, in order.
    max_lesions, max_images, max_bytes : int
        A chunk closes before it would exceed ``max_lesions`` or once it holds
        ``max_images`` images or ``max_bytes`` of pixels (the serial loop's rule).
    read_ahead : int, optional
        Images read ahead of the chunk being formed (default ``max_images``).
    segmenters : int
        Chunks segmented at the same time (threads calling ``steps.segment``).
    """
    pipe = _Pipeline(todo, steps, max(1, int(read_ahead or max_images)))
    limits = (max_lesions, max_images, max_bytes)
    pool = ThreadPoolExecutor(max(1, int(segmenters)), thread_name_prefix="recist-segment")
    flight: deque[tuple[list[Any], list[Callable[[], None]], Future]] = deque()

    def settle() -> bool:
        """The oldest chunk in flight: its results to the writer, in order (False:
        cancelled, stop)."""
        chunk, events, fut = flight.popleft()
        results = fut.result()
        pipe.drain()  # the chunks before were written while this one was segmented
        steps.tick()  # (the writer is idle: the records are not being changed)
        if steps.cancelled():
            return False
        for event in events:  # then this chunk's read failures: the serial order
            event()
        pipe.submit(chunk, results)
        return True

    try:
        pipe.read_more()
        going = True
        while going and pipe.reads and not pipe.cancelled:
            chunk, events = pipe.chunk(limits)
            if chunk and not pipe.cancelled:
                fut = pool.submit(steps.segment, chunk)
            else:
                fut = Future()
                fut.set_result([])
            flight.append((chunk, events, fut))
            if len(flight) >= max(1, int(segmenters)):
                going = settle()
        while going and flight:
            going = settle()
        pipe.drain()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        pipe.close()
