"""TensorFlow's start-up lines are held back from the medtl command; nothing else is."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from medtl.tfimport import startup_lines_kept

BANNER = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
ONEDNN = b"I0000 00:00:1796324903.464510    8646 port.cc:153] oneDNN custom operations are on.\n"
NO_DRIVER = (b"I0000 00:00:1796324903.464882    8646 cudart_stub.cc:31] Could not find cuda drivers on "
             b"your machine, GPU will not be used.\n")
CUINIT = (b"E0000 00:00:1796324911.003073    8646 cuda_platform.cc:52] failed call to cuInit: INTERNAL: "
          b"CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n")
WARN = b"W0000 00:00:1796324911.100000    8646 gpu_device.cc:2344] Cannot dlopen some GPU libraries.\n"


def test_info_lines_and_the_banner_go_warnings_and_other_text_stay():
    other = b"/x/keras/src/ops.py:12: DeprecationWarning: old\n"
    assert startup_lines_kept([BANNER, ONEDNN, WARN, other, BANNER, ONEDNN]) == [WARN, other]


def test_cuinit_error_goes_only_after_tensorflow_found_no_driver():
    assert startup_lines_kept([BANNER, ONEDNN, NO_DRIVER, CUINIT]) == []
    # With a driver installed, a failing cuInit is why the GPU is not used: it must show.
    assert startup_lines_kept([BANNER, ONEDNN, CUINIT]) == [CUINIT]


def _stderr_of(body: str) -> str:
    code = "import os, sys\nfrom medtl.tfimport import filtered_stderr\n" + textwrap.dedent(body)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    return proc.stderr.decode()


def test_descriptor_2_is_filtered_inside_and_restored_after():
    err = _stderr_of(f"""
        print("before", file=sys.stderr)
        with filtered_stderr():
            os.write(2, {BANNER + ONEDNN!r})            # as TensorFlow's C++ code writes them
            print("a python warning", file=sys.stderr)
            os.write(2, {WARN!r})
        os.write(2, {ONEDNN!r})                         # after the block: not filtered
        print("after", file=sys.stderr)
    """)
    assert err.splitlines() == ["before", "a python warning", WARN.decode().strip(), ONEDNN.decode().strip(),
                                "after"]


def test_a_failing_block_writes_everything_it_captured():
    err = _stderr_of(f"""
        try:
            with filtered_stderr():
                os.write(2, {ONEDNN!r})
                raise ImportError("libcudnn.so.9: cannot open shared object file")
        except ImportError as exc:
            print("raised:", exc, file=sys.stderr)
    """)
    assert err.splitlines() == [ONEDNN.decode().strip(), "raised: libcudnn.so.9: cannot open shared object file"]


@pytest.mark.slow
def test_real_tensorflow_import_prints_none_of_its_start_up_lines():
    env_code = ("import os; os.environ['TF_CPP_MIN_LOG_LEVEL'] = '2'\n"
                "from medtl.tfimport import import_tensorflow; import_tensorflow()\n"
                "import sys; assert 'tensorflow' in sys.modules; print('done', file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", env_code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.splitlines()[-1] == "done"
    assert "absl::InitializeLog" not in proc.stderr and "oneDNN" not in proc.stderr
