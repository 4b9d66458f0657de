"""The worker process pool: order, chunking, crash isolation, no TensorFlow in workers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from medtl.data.pool import run_chunked


def _square(chunk, arg):
    return [x * x + arg for x in chunk]


def test_run_chunked_keeps_order(tmp_path):
    # _square is defined in this test module: the worker imports it (no TensorFlow there either).
    assert run_chunked(_square, list(range(50)), 1, workers=2, chunk_size=3) == [x * x + 1 for x in range(50)]


def test_default_chunks_shrink_towards_the_end_and_keep_order():
    from medtl.data.pool import _chunks

    sizes = [len(c) for c in _chunks(list(range(301)), 3, None)]
    assert sum(sizes) == 301 and max(sizes) == 8 and sizes[-1] == 1
    assert sizes == sorted(sizes, reverse=True)  # no long chunk left for the end
    assert [len(c) for c in _chunks(list(range(7)), 3, 2)] == [2, 2, 2, 1]
    assert run_chunked(_square, list(range(90)), 2, workers=2) == [x * x + 2 for x in range(90)]


def _crashy(chunk, arg):
    out = []
    for x in chunk:
        if x == arg:
            os._exit(3)  # what a segfaulting decoder looks like to the pool
        out.append(x)
    return out


def test_a_crashing_worker_is_pinned_on_its_item():
    got = run_chunked(_crashy, list(range(12)), 7, workers=2, chunk_size=2, steal=False,
                      on_crash=lambda item, why: ("crash", item))
    assert got[:7] == list(range(7)) and got[8:] == list(range(8, 12))
    assert got[7] == ("crash", 7)


def test_main_script_is_not_rerun_in_workers(tmp_path):
    # A script without a __main__ guard: re-running it in each worker would recurse.
    script = tmp_path / "unguarded.py"
    script.write_text(
        "import os, sys\n"
        "from medtl.data.pool import run_chunked, start_decoder_server\n"
        "from medtl.data.inspect import _probe_chunk\n"
        "print('main ran', os.getpid(), flush=True)\n"
        "start_decoder_server()  # as the CLI does, before anything else\n"
        "res = run_chunked(_probe_chunk, ['/nonexistent'] * 8, 'auto', workers=2, chunk_size=1)\n"
        "assert len(res) == 8 and all('not found' in r['error'] for r in res)\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("main ran") == 1


def _modules_loaded(chunk, arg):
    return [(os.getpid(), arg in sys.modules) for _ in chunk]


def test_workers_of_a_tensorflow_process_have_no_tensorflow():
    pytest.importorskip("tensorflow")
    got = run_chunked(_modules_loaded, list(range(16)), "tensorflow", workers=2, chunk_size=1, steal=False)
    assert {pid for pid, _ in got} - {os.getpid()}, "nothing ran in a worker"
    assert not any(loaded for _, loaded in got)


def test_worker_modules_do_not_import_tensorflow():
    code = (
        "import sys, medtl.data.pool, medtl.data.cache, medtl.data.inspect, medtl.data, medtl;"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TF imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
