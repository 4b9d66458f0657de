"""Leave no empty run folder behind: a run refused before it trained removes the folder it made.

A run refused by data validation (an unreadable manifest, a leakage guard, a wrong monitor)
would otherwise leave ``runs/<name>/<time>/`` holding an empty ``ckpt/`` and a log, which looks
like a run that can be resumed. A folder is removed only when this call created it and the
marker of real progress (``ckpt/state.json``, written after the first epoch) is absent.

Example:
    >>> fresh = not Path(run_dir).exists()
    >>> Path(run_dir).mkdir(parents=True)
    >>> with removed_if_refused(run_dir, fresh, Path(run_dir) / "ckpt" / "state.json"):
    ...     train_the_run()
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["removed_if_refused"]


@contextmanager
def removed_if_refused(run_dir: str | Path, fresh: bool, marker: str | Path) -> Iterator[Path]:
    """Remove ``run_dir`` if an exception escapes before ``marker`` exists.

    Args:
        run_dir: the run folder.
        fresh: whether the caller created ``run_dir`` just now; a folder that existed before
            (a resumed run, a folder the user chose) is never removed.
        marker: a file whose existence means the run has made progress worth keeping.

    Yields:
        ``run_dir`` as a Path. The exception is re-raised unchanged.
    """
    path = Path(run_dir)
    try:
        yield path
    except BaseException:
        if fresh and not Path(marker).exists():
            shutil.rmtree(path, ignore_errors=True)
        raise
