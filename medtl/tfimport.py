"""Import TensorFlow for the ``medtl`` command without its start-up chatter.

TensorFlow's C++ libraries log a few INFO lines when they load ("oneDNN custom operations are
on", "Could not find cuda drivers ...") and, on a machine without CUDA drivers, an ERROR line
when the GPU platform is first asked for its devices ("failed call to cuInit"). They are written
before absl logging is initialised, so ``TF_CPP_MIN_LOG_LEVEL`` does not hold them back
(tensorflow/tensorflow#102212), and a clinician running ``medtl cv`` on a laptop reads an "E"
line as a failure. :func:`import_tensorflow` sends file descriptor 2 to a temporary file while
TensorFlow loads and lists its devices, then writes back every line except those: warnings,
errors and anything else TensorFlow or Python printed come through, in order.

``TF_CPP_MIN_LOG_LEVEL=0`` (asking for TensorFlow's INFO lines) turns the filter off.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from typing import Iterable, Iterator

__all__ = ["import_tensorflow", "startup_lines_kept", "filtered_stderr"]

_BANNER = re.compile(rb"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR\s*$")
# absl's prefix: severity letter, MMDD, time, thread id, file:line]
_ABSL_INFO = re.compile(rb"^I\d{4} [\d:.]+\s+\d+ [\w.\-]+:\d+\] ")
_NO_DRIVER = re.compile(rb"Could not find cuda drivers on your machine")
_CUINIT = re.compile(rb"^E\d{4} .*failed call to cuInit")


def startup_lines_kept(lines: Iterable[bytes]) -> list[bytes]:
    """The lines of TensorFlow's start-up output worth showing.

    Drops absl's pre-initialisation banner and INFO lines, and the cuInit ERROR line only when
    TensorFlow has already said there is no CUDA driver (on a machine with a driver whose
    cuInit fails, that line is the one that says why the GPU is not used).
    """
    kept, no_driver = [], False
    for line in lines:
        no_driver = no_driver or bool(_NO_DRIVER.search(line))
        if _BANNER.match(line) or _ABSL_INFO.match(line) or (no_driver and _CUINIT.match(line)):
            continue
        kept.append(line)
    return kept


@contextlib.contextmanager
def filtered_stderr() -> Iterator[None]:
    """Inside: file descriptor 2 goes to a temporary file. On leaving, the lines that
    :func:`startup_lines_kept` keeps are written to the real descriptor 2, or every line when
    the block raised (a failed import has nothing to hide). A file, not a pipe: C code that
    logs while holding the GIL could fill a pipe that no thread drains."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no standard error to filter
        yield
        return
    failed = False
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines = tmp.read().splitlines(keepends=True)
            kept = lines if failed else startup_lines_kept(lines)
            data = memoryview(b"".join(kept))
            while data:  # os.write may write only part of a large buffer
                data = data[os.write(2, data):]


def import_tensorflow() -> None:
    """Import Keras and TensorFlow and list the GPUs, with the start-up lines filtered.

    Does nothing when TensorFlow is already imported, and filters nothing under
    ``TF_CPP_MIN_LOG_LEVEL=0`` (or unset).

    Example:
        >>> os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        >>> import_tensorflow()  # later ``import tensorflow`` statements print nothing
    """
    if "tensorflow" in sys.modules:
        return
    quiet = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "").strip() not in ("", "0")
    with filtered_stderr() if quiet else contextlib.nullcontext():
        # In the function, not at module level: TensorFlow loads only when called, its noise filtered
        import keras  # noqa: F401 - loads TensorFlow's libraries too
        import tensorflow as tf  # in the function for the same reason

        tf.config.list_physical_devices("GPU")  # the cuInit line comes with the first query
