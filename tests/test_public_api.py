"""The public API in medtl/__init__.py: lazy, complete, and ``medtl.train`` always callable."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap


def _run(code: str) -> str:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_import_is_lazy_and_every_public_name_resolves():
    # A fresh interpreter: what was imported before decides which object a name is bound to.
    out = _run("""
        import sys
        import medtl
        assert "tensorflow" not in sys.modules, "import medtl loaded TensorFlow"
        for name in medtl.__all__:
            assert getattr(medtl, name) is not None, name
        print(sorted(medtl.__all__))
    """)
    for name in ("run_cv", "merge_cv", "format_cv", "write_report", "compute_cam", "make_sample_data",
                 "write_starter_config", "train", "load_config", "load_manifest", "build_model",
                 "inspect", "init", "cv", "predict", "evaluate", "compare", "explain", "report",
                 "explain_for_original", "overlay"):
        assert f"'{name}'" in out


def test_train_stays_callable_whatever_was_imported_first():
    # The sub-package medtl.train shares the function's name; importing it (here through the
    # trainer, as run_cv does) must neither hide the function nor break the package.
    _run("""
        import medtl
        from medtl.train.trainer import train
        import medtl.train.losses
        assert callable(medtl.train) and callable(medtl.train)
        assert medtl.train.losses.make_loss is not None
        assert medtl.train.train is train
    """)
    _run("""
        import medtl
        first = medtl.train
        second = medtl.train
        assert first is second and callable(first)
        from medtl.evaluate.cv import run_cv
        assert callable(medtl.train)
    """)
