"""Mixed precision, XLA and the distribution strategy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from tests.train.conftest import tiny_config

REPO = Path(__file__).resolve().parents[2]


def test_precision_policy_follows_the_hardware(monkeypatch):
    from medtl.train import runtime

    assert runtime.resolve_precision("off") == "float32"
    assert runtime.resolve_precision("on") == "mixed_float16"
    monkeypatch.setattr(runtime, "gpus_visible", lambda: 0)
    assert runtime.resolve_precision("auto") == "float32"
    monkeypatch.setattr(runtime, "gpus_visible", lambda: 1)
    assert runtime.resolve_precision("auto") == "mixed_float16"
    with pytest.raises(ValueError, match="train.mixed_precision: invalid value 'fp16'"):
        runtime.resolve_precision("fp16")


def test_strategy_choice_on_a_cpu_machine():
    import tensorflow as tf

    from medtl.train.runtime import make_strategy

    assert make_strategy("none") is tf.distribute.get_strategy()
    if not tf.config.list_logical_devices("GPU"):
        assert make_strategy("auto") is tf.distribute.get_strategy()
    with pytest.raises(ValueError, match="train.distribute"):
        make_strategy("tpu")


def test_mixed_precision_model_keeps_float32_scores_and_scales_the_loss(tiny_data, tmp_path):
    from medtl.models import build_model
    from medtl.train.runtime import runtime_for

    cfg = tiny_config(tiny_data, tmp_path, train={"mixed_precision": "on"})
    before = keras.config.dtype_policy().name
    with runtime_for(cfg.train) as rt:
        assert rt.policy == "mixed_float16" and keras.config.dtype_policy().name == "mixed_float16"
        with rt.scope():
            model = build_model(cfg, 1)
            model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy",
                          jit_compile=rt.jit_compile)
    assert keras.config.dtype_policy().name == before  # restored after the run
    assert model.get_layer("backbone").compute_dtype == "float16"
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    x = np.random.default_rng(0).random((4, 32, 32, 1)).astype("float32")
    loss = model.train_on_batch(x, np.array([[0], [1], [0], [1]], "float32"))
    assert np.isfinite(loss)
    assert model.predict(x, verbose=0).dtype == np.float32


def test_xla_flag_reaches_compile(tiny_data, tmp_path, monkeypatch):
    from medtl.train.trainer import train

    seen = []
    real = keras.Model.compile

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("jit_compile"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "compile", spy)
    cfg = tiny_config(tiny_data, tmp_path, augment={"preset": "none"},
                      train={"xla": True, "feature_cache": True,
                             "stages": [{"unfreeze": "head", "epochs": 1}]})
    res = train(cfg, run_dir=tmp_path / "run", progress=False)
    assert seen == [True] and res.metrics["runtime"]["jit_compile"] is True
    assert np.isfinite(res.history["val_loss"]).all()


_MIRRORED = """
import json, sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from medtl.config import load_resolved
from medtl.train.trainer import train
cfg = load_resolved(sys.argv[1])
out = {}
for mode in ("mirrored", "none"):
    cfg.train.distribute = mode
    res = train(cfg, run_dir=f"{sys.argv[2]}/{mode}", progress=False)
    out[mode] = {"replicas": res.metrics["runtime"]["replicas"],
                 "scores": res.val_predictions["score"].tolist(),
                 "loss": res.history["loss"].tolist()}
print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow
def test_mirrored_strategy_over_two_logical_cpus(tiny_data, tmp_path):
    """One epoch split over two CPU replicas gives the single-device result (no dropout)."""
    from medtl.config import save_config

    cfg = tiny_config(tiny_data, tmp_path, augment={"preset": "none"},
                      model={"dropout": 0.0},
                      train={"feature_cache": False, "stages": [{"unfreeze": "head", "epochs": 1}]})
    save_config(cfg, tmp_path / "config.yaml")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-c", _MIRRORED, str(tmp_path / "config.yaml"), str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert proc.returncode == 0 and line, proc.stderr[-3000:]
    out = json.loads(line[0][len("RESULT "):])
    assert out["mirrored"]["replicas"] == 2 and out["none"]["replicas"] == 1
    np.testing.assert_allclose(out["mirrored"]["loss"], out["none"]["loss"], rtol=1e-4)
    np.testing.assert_allclose(out["mirrored"]["scores"], out["none"]["scores"], atol=1e-4)
