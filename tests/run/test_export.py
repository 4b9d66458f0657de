"""medtl export: each format round-trips a CV ensemble with per-fold calibrators, and the
exported graph gives what ``medtl predict`` gives on the same films (max |diff| <= 1e-4)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from medtl.stats.postprocess import PostProcess

TOL = 1e-4


def _films(root) -> list[str]:
    return sorted(str(p) for p in (root / "films").glob("*.png"))


def _calibrate_folds(run) -> None:
    """Give the old 2-fold run a Platt calibrator (fold 0) and a temperature (fold 1), so the
    graph must carry both and the scores leave the near-zero range of the shrunk fixtures."""
    cals = {0: {"method": "platt", "slope": 0.45, "intercept": 1.2, "input": "probability"},
            1: {"method": "temperature", "temperature": 6.0, "input": "probability"}}
    for f, cal in cals.items():
        path = run / f"fold_{f}" / "postprocess.json"
        pp = json.loads(path.read_text())
        pp.update(calibration=cal["method"], calibrators=[cal], thresholds=[0.3])
        path.write_text(json.dumps(pp))


def _needs(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (pip install 'medtl[export]')")


def _run_export(fmt: str, path, x: np.ndarray) -> np.ndarray:
    if fmt == "savedmodel":
        import tensorflow as tf

        loaded = tf.saved_model.load(str(path))  # kept alive: its variables die with it
        return loaded.serve(x).numpy()
    if fmt == "onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return sess.run(None, {sess.get_inputs()[0].name: x})[0]
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    inp = it.get_input_details()[0]
    it.resize_tensor_input(inp["index"], x.shape)  # the graph's batch dimension is free
    it.allocate_tensors()
    it.set_tensor(inp["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


@pytest.mark.parametrize("fmt", ["savedmodel", "onnx", "litert"])
def test_export_matches_medtl_predict(old_runs, tmp_path, fmt):
    if fmt == "onnx":
        _needs("tf2onnx", "onnx", "onnxruntime")
    if fmt == "litert":
        _needs("ai_edge_litert")
    import medtl
    from medtl.cli import main
    from medtl.data.pipeline import ImagePipeline
    from medtl.run.predictor import Predictor

    run = old_runs / "cv_run"
    _calibrate_folds(run)
    films = _films(old_runs)
    expected = medtl.predict(run, films)
    out = tmp_path / "deploy"
    assert main(["export", str(run), "--format", fmt, "--out", str(out)]) == 0

    # Feed the graph what its sidecar says: the film as medtl reads it, resized.
    side = json.loads((out / "medtl_export.json").read_text())
    pipe = ImagePipeline(Predictor(run).pipeline_config())
    x = np.stack([pipe.load(f)[0] for f in films]).astype(np.float32)
    assert list(x.shape[1:]) == side["input"]["shape"][1:]
    got = _run_export(fmt, out / side["artefacts"][fmt], x)
    want = expected[side["score_columns"]].to_numpy()
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= TOL
    assert 0.05 < want.min() and want.max() < 0.95  # calibrated: not the raw near-zero scores


def test_sidecar_has_what_deployment_needs_and_no_paths(old_runs, tmp_path):
    import medtl

    run = old_runs / "cv_run"
    _calibrate_folds(run)
    out = tmp_path / "deploy"
    medtl.export(run, out, format="savedmodel")
    text = (out / "medtl_export.json").read_text()
    side = json.loads(text)
    assert side["classes"] == ["normal", "lesion"] and side["score_columns"] == ["score"]
    assert side["thresholds"] == [pytest.approx(0.3)]
    assert side["ensemble"] == {"members": 2, "folds": [0, 1], "combine": "mean of the members' calibrated scores"}
    assert side["calibration"]["in_graph"] and side["calibration"]["methods"] == ["platt", "temperature"]
    assert side["input"]["shape"] == [None, 32, 32, 1] and side["preprocessing"]["keep_aspect"] is True
    assert str(tmp_path) not in text and "P0001" not in text and "films" not in text
    assert medtl.deid_check(run, [out]) == []
    with pytest.raises(FileExistsError, match="--overwrite"):
        medtl.export(run, out, format="savedmodel")


def test_unknown_format_is_refused_before_loading_anything(tmp_path):
    from medtl.run.export import export_run

    with pytest.raises(ValueError, match="--format 'torchscript'.*savedmodel, onnx, litert"):
        export_run(tmp_path / "no_run", tmp_path / "out", fmt="torchscript")


@pytest.mark.parametrize("task,cal", [
    ("binary", {"method": "platt", "slope": 0.7, "intercept": -0.4}),
    ("binary", {"method": "temperature", "temperature": 2.5}),
    ("multilabel", None),
    ("multiclass", {"method": "temperature", "temperature": 1.7}),
])
def test_calibration_layer_is_postprocess_calibrate(task, cal):
    from medtl.run.export import _calibration_layer

    rng = np.random.default_rng(0)
    k = 1 if task == "binary" else 3
    p = rng.uniform(0, 1, (64, k))
    p[:3] = [0.0, 1.0, 1e-9][:k] if k == 3 else [[0.0], [1.0], [1e-9]]  # the clipped ends
    if task == "multiclass":
        p = p / p.sum(axis=1, keepdims=True)
    cals = [cal] if cal else [{"method": "platt", "slope": 0.5 + j, "intercept": 0.3 * j} for j in range(k)]
    pp = PostProcess(task=task, classes=[f"c{j}" for j in range(max(k, 2))], rule=None,
                     calibration=cals[0]["method"], calibrators=[{**c, "input": "probability"} for c in cals])
    layer = _calibration_layer(pp, task, name="cal")
    got = np.asarray(layer(p.astype(np.float32)))
    np.testing.assert_allclose(got, pp.calibrate(p), atol=1e-5)
