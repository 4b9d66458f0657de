"""A crash-tolerant process pool for per-file work (no TensorFlow here).

:func:`run_chunked` applies a function to chunks of items in worker processes and guarantees:

* results come back in item order, however the chunks were scheduled;
* chunks shrink towards the end of the list (guided scheduling), so no process is left
  finishing a long chunk while the others idle;
* the calling process works through chunks too while the workers start, so small jobs are not
  slower than a plain loop;
* a worker that dies (a decoder segfaulting on a corrupt file) loses no other item: the chunks
  it held are retried one item per process, and the item that kills its process is reported
  through ``on_crash`` instead of taking the run down;
* workers are started with ``forkserver`` (``spawn`` where there is none), never ``fork``,
  because forking a process that has loaded TensorFlow can deadlock; they never re-run the
  caller's main script.

The worker function must live at module level in a module that does not import TensorFlow
(:mod:`medtl.data.cache`, :mod:`medtl.data.inspect`), so workers unpickle it by reference.

Example:
    >>> run_chunked(_fill_chunk, items, spec, workers=4, on_crash=_crashed)
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import importlib.machinery
import multiprocessing as mp
import os
import sys
import threading
from multiprocessing import forkserver
from typing import Any, Callable, Iterator, Sequence

import cv2


def default_workers(workers: int | None = None) -> int:
    """``data.workers`` if set, else the CPUs this process may use."""
    if workers:
        return int(workers)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# Imported once by the fork server, so each worker starts with the decoders already loaded.
# Workers unpickle by reference this module (the initializer) and the worker functions
# (cache's _fill_chunk; inspect's _probe_chunk, whose module also loads config and manifest).
_PRELOAD = ["medtl.data.pool", "medtl.data.cache", "medtl.data.inspect", "medtl.io",
            "pylibjpeg", "openjpeg", "libjpeg", "rle"]
_LAUNCH_LOCK = threading.Lock()


def _context() -> mp.context.BaseContext:
    """The start method for worker processes: forkserver on Linux, else spawn; never fork."""
    if sys.platform.startswith("linux") and "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        # The server starts from a fresh interpreter (TensorFlow loaded here never reaches it);
        # modules that fail to import are skipped by the server.
        ctx.set_forkserver_preload(_PRELOAD)
        return ctx
    return mp.get_context("spawn")


def start_decoder_server() -> None:
    """Start the process that decoding workers are forked from, without waiting for it.

    The server imports pydicom and the decoders (~0.2 s of CPU) in its own process. Called
    early (the CLI calls it before importing TensorFlow; :class:`ImagePipeline` when it is
    built), that start overlaps with work this process does anyway, instead of delaying the
    first decoded files. It does nothing where workers are spawned instead (not Linux), and
    nothing when the server is already running.
    """
    if not (sys.platform.startswith("linux") and "forkserver" in mp.get_all_start_methods()):
        return
    _context()  # sets the modules the server imports
    try:
        with _main_not_reimported():
            forkserver.ensure_running()
    except (OSError, RuntimeError, ValueError):
        pass  # only a head start: if processes cannot start, run_chunked reports it when it needs them


def _worker_init() -> None:
    """Runs once in each worker process, before its first chunk."""
    cv2.setNumThreads(1)  # one process per core already; OpenCV's own threads would oversubscribe


@contextlib.contextmanager
def _main_not_reimported() -> Iterator[None]:
    """Keep new worker processes from re-running the caller's main script.

    With spawn/forkserver, multiprocessing re-executes ``__main__`` in every worker so that
    functions defined there can be unpickled. Our worker functions live in medtl modules, and
    re-running a script would import whatever it imports (TensorFlow, or the whole pipeline
    again when the script lacks an ``if __name__ == "__main__"`` guard). A main spec named
    ``__main__`` is multiprocessing's own signal to skip that step.
    """
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    with _LAUNCH_LOCK:
        had = "__spec__" in vars(main)
        old = getattr(main, "__spec__", None)
        main.__spec__ = importlib.machinery.ModuleSpec("__main__", None)
        try:
            yield
        finally:
            if had:
                main.__spec__ = old
            else:
                del main.__spec__


class _Queue:
    """Chunk numbers, in order, shared by the worker feeder and this process."""

    def __init__(self, n: int):
        self._left = collections.deque(range(n))
        self._lock = threading.Lock()

    def take(self) -> int | None:
        with self._lock:
            return self._left.popleft() if self._left else None

    def clear(self) -> None:
        with self._lock:
            self._left.clear()


def _feed(
    fn: Callable, chunks: list[list], arg: Any, workers: int, queue: _Queue,
    results: list, crashed: list[int], errors: list[BaseException],
) -> None:
    """Keep ``workers`` processes busy with chunks from ``queue`` (runs in a thread)."""
    ctx = _context()
    ex: cf.ProcessPoolExecutor | None = None
    inflight: dict[cf.Future, int] = {}
    try:
        ex = cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init)
        while True:
            while len(inflight) < 2 * workers and (j := queue.take()) is not None:
                with _main_not_reimported():
                    inflight[ex.submit(fn, chunks[j], arg)] = j
            if not inflight:
                return
            done, _ = cf.wait(inflight, return_when=cf.FIRST_COMPLETED)
            broken = False
            for fut in done:
                j = inflight.pop(fut)
                try:
                    results[j] = fut.result()
                except cf.BrokenExecutor:
                    crashed.append(j)
                    broken = True
            if broken:  # every chunk still in the dead pool is lost; retry them in isolation later
                for fut, j in inflight.items():
                    if fut.done() and fut.exception() is None:
                        results[j] = fut.result()
                    else:
                        crashed.append(j)
                inflight.clear()
                ex.shutdown(wait=True)
                ex = cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init)
    except BaseException as exc:  # handed to the calling thread
        errors.append(exc)
        queue.clear()
    finally:
        if ex is not None:
            ex.shutdown(wait=True, cancel_futures=True)


def _chunks(items: Sequence[Any], processes: int, size: int | None) -> list[list]:
    """Fixed-size chunks, or (size None) chunks of ~1/(2 * processes) of what is left, 1 to 8."""
    if size is not None:
        return [list(items[i : i + size]) for i in range(0, len(items), size)]
    out, i = [], 0
    while i < len(items):
        step = max(1, min(8, (len(items) - i) // (2 * processes)))
        out.append(list(items[i : i + step]))
        i += step
    return out


def run_chunked(
    fn: Callable[[list, Any], list],
    items: Sequence[Any],
    arg: Any,
    workers: int | None = None,
    chunk_size: int | None = None,
    on_crash: Callable[[Any, str], Any] | None = None,
    steal: bool = True,
) -> list:
    """Apply ``fn(chunk, arg)`` over ``items`` in worker processes; results in item order.

    ``fn`` must be a module-level function of a module that does not import TensorFlow. With
    ``steal``, the calling process also works through chunks while the workers start and run,
    so small jobs are not slower than a plain loop (but a decoder that crashes there takes this
    process with it). Without ``chunk_size``, chunks shrink towards the end of the list (guided
    scheduling), so no process is left finishing a long chunk while the others idle. If a
    worker dies (a decoder crashing on a corrupt file), its items are retried one per process
    and ``on_crash(item, reason)`` gives the result for the one that kills its process.
    """
    n = len(items)
    workers = min(default_workers(workers), n)
    chunks = _chunks(items, workers + int(steal), chunk_size)
    if workers <= 1 or len(chunks) <= 2:
        return [r for c in chunks for r in fn(c, arg)]
    results: list[list | None] = [None] * len(chunks)
    crashed: list[int] = []
    errors: list[BaseException] = []
    queue = _Queue(len(chunks))
    # The pool starts in a thread: starting worker processes blocks for as long as the fork
    # server takes to import the decoders, and this process can decode meanwhile.
    feeder = threading.Thread(
        target=_feed, args=(fn, chunks, arg, workers, queue, results, crashed, errors), daemon=True,
        name="medtl-decode-feeder",
    )
    feeder.start()
    try:
        while steal and (j := queue.take()) is not None:
            results[j] = fn(chunks[j], arg)
        feeder.join()
    except BaseException:
        queue.clear()  # the feeder finishes what is in flight and stops
        raise
    if errors:
        raise errors[0]
    if crashed:
        if on_crash is None:
            raise RuntimeError(f"a worker process died while running {fn.__name__}; see the log above")
        crashed.sort()
        pending = [item for j in crashed for item in chunks[j]]
        for j, part in zip(crashed, _isolate(fn, pending, arg, on_crash, [len(chunks[j]) for j in crashed])):
            results[j] = part
    return [r for part in results for r in part]  # type: ignore[union-attr]


def _isolate(fn: Callable, items: list, arg: Any, on_crash: Callable, sizes: list[int]) -> list[list]:
    """Run each item in a pool of its own so one crash is pinned on one file."""
    flat = []
    ctx = _context()
    for item in items:
        with cf.ProcessPoolExecutor(max_workers=1, mp_context=ctx, initializer=_worker_init) as ex:
            with _main_not_reimported():
                fut = ex.submit(fn, [item], arg)
            try:
                flat.extend(fut.result())
            except cf.BrokenExecutor:
                flat.append(on_crash(item, "the decoder crashed its worker process (corrupt file?)"))
    out, k = [], 0
    for size in sizes:
        out.append(flat[k : k + size])
        k += size
    return out
