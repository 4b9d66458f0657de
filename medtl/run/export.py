"""Export a finished run as ONE inference graph (SavedModel, ONNX or LiteRT) plus a sidecar JSON.

The exported graph gives what ``medtl predict`` gives in its score column(s), for the same
model input: every member model of the run (one model, or each fold model of a CV ensemble),
each member's calibrator from its ``postprocess.json`` (when one was fitted), and the mean over
members, exactly as :meth:`medtl.run.predictor.Predictor.combine` computes them.

What is inside the graph and what is not:

* inside: the model's own input normalisation (grey -> RGB and the backbone's scaling, the
  ``preprocess`` layer of every medtl model), the backbone and head, calibration, the
  ensemble mean;
* outside: reading the film. DICOM decoding (modality LUT, VOI LUT or window, MONOCHROME1
  inversion, frame choice) and the letterbox/resize to the model's size are done by
  ``medtl.io`` / ``medtl.data`` in NumPy and pydicom, not TensorFlow, so they cannot be graph
  ops. The graph takes the film as medtl reads it: float32 in [0, 1], shape (N, H, W, 1),
  after the resize recorded in the sidecar (``input`` and ``preprocessing``). Feed it
  :meth:`medtl.data.pipeline.ImagePipeline.load` output (or an equivalent reader) and the
  scores equal ``medtl predict``'s.

The sidecar (``medtl_export.json``) holds classes, score columns, decision thresholds,
calibration, the input size and pixel settings, and the ensemble's folds: no path, no patient
data (the caller can check it with :func:`medtl.report.deid.deid_check`).

Example:
    >>> from medtl.run.export import export_run
    >>> export_run("runs/demo/cv-1a2b3c4d5e", "deploy/", fmt="onnx")
    PosixPath('deploy/model.onnx')
"""

from __future__ import annotations

import json
import shutil
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np

from medtl.io.atomic import write_json
from medtl.run.files import score_columns
from medtl.run.predictor import Predictor, TTAMismatchWarning
from medtl.stats.calibration import EPS

__all__ = ["FORMATS", "SIDECAR_FILE", "export_run", "build_export_model", "sidecar"]

#: format name -> (Keras ``Model.export`` format, file or folder written in the output folder)
FORMATS: dict[str, tuple[str, str]] = {
    "savedmodel": ("tf_saved_model", "saved_model"),
    "onnx": ("onnx", "model.onnx"),
    "litert": ("litert", "model.tflite"),
}
SIDECAR_FILE = "medtl_export.json"
SIDECAR_FORMAT = 1
# What each format needs beyond TensorFlow/Keras (pip names), for the error message.
_NEEDS = {"onnx": ("tf2onnx", "onnx"), "litert": ()}

INPUT_NOTE = ("float32 (N, H, W, 1) in [0, 1]: the film as medtl reads it (DICOM modality LUT, VOI LUT or "
              "window, MONOCHROME1 inverted, scaled to [0, 1]; PNG/JPEG grey levels / max), then resized to "
              "H x W with the preprocessing settings below (keep_aspect: letterboxed, padded with 0). Decoding "
              "and resizing are not graph operations: do them with medtl (medtl.data.pipeline.ImagePipeline"
              ".load) or an equivalent reader. The model's own normalisation (grey to RGB, the backbone's "
              "scaling) is inside the graph.")


def _calibration_layer(pp: Any, task: str, name: str):
    """A Keras layer applying one member's calibrator(s) to its (N, K) probabilities, or None
    when the member has none. Same maths as :mod:`medtl.stats.calibration`, in float32."""
    if pp is None or not pp.calibrators:
        return None
    multiclass = task == "multiclass"
    slopes, intercepts, logit_in = [], [], set()
    for c in pp.calibrators[:1] if multiclass else pp.calibrators:
        if c["method"] == "temperature":
            slopes.append(1.0 / float(c["temperature"]))
            intercepts.append(0.0)
        elif c["method"] == "platt":
            slopes.append(float(c["slope"]))
            intercepts.append(float(c["intercept"]))
        else:
            raise ValueError(f"postprocess.json: calibrator method {c['method']!r} cannot be exported; "
                             "expected temperature or platt")
        logit_in.add(c.get("input", "probability") == "logit")
    if len(logit_in) != 1:
        raise ValueError("postprocess.json: calibrators mix probability and logit input; refit the run")
    return _calibrate_class()(slopes, intercepts, multiclass, logit_in.pop(), name=name)


def _calibrate_class() -> type:
    """The calibration layer's class, defined on first use."""
    global _CALIBRATE
    if _CALIBRATE is not None:
        return _CALIBRATE
    # why: the layer subclasses keras.layers.Layer; Keras (TensorFlow) loads only when exporting
    import keras
    from keras import ops  # why: as keras above

    class Calibrate(keras.layers.Layer):
        """p -> sigmoid(a * logit(p) + b) per column (binary, multilabel: Platt, or a = 1/T),
        or softmax(log(p) / T) (multiclass temperature); p clipped to [EPS, 1 - EPS] first,
        as medtl.stats.calibration does."""

        def __init__(self, slopes: list[float], intercepts: list[float], multiclass: bool = False,
                     logit_input: bool = False, **kwargs: Any) -> None:
            super().__init__(**{"dtype": "float32", **kwargs})
            self.slopes, self.intercepts = [float(v) for v in slopes], [float(v) for v in intercepts]
            self.multiclass, self.logit_input = bool(multiclass), bool(logit_input)

        def call(self, p):
            a = ops.convert_to_tensor(np.asarray(self.slopes, np.float32))
            b = ops.convert_to_tensor(np.asarray(self.intercepts, np.float32))
            p = ops.cast(p, "float32")
            # medtl clips p to [EPS, 1 - EPS] in float64; float32 cannot hold 1 - EPS (it rounds
            # to 1 - 1.19e-7, 1e-4 off after calibration at p = 1), so the clip is applied to
            # log(p) or logit(p), where both ends are exact.
            if self.multiclass:
                z = p if self.logit_input else ops.clip(ops.log(p), _LOG_EPS, _LOG_1M_EPS)
                return ops.softmax(z * a[0], axis=-1)
            # log(p) - log(1 - p): ONNX has no Log1p op; 1 - p is exact for p >= 0.5.
            z = p if self.logit_input else ops.clip(ops.log(p) - ops.log(1.0 - p), -_LOGIT_MAX, _LOGIT_MAX)
            return ops.sigmoid(z * a + b)

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self) -> dict:
            return {**super().get_config(), "slopes": self.slopes, "intercepts": self.intercepts,
                    "multiclass": self.multiclass, "logit_input": self.logit_input}

    _CALIBRATE = Calibrate
    return Calibrate


_CALIBRATE: type | None = None
# The clip ends of medtl.stats.calibration, in log and logit space (computed in float64).
_LOG_EPS, _LOG_1M_EPS = float(np.log(EPS)), float(np.log1p(-EPS))
_LOGIT_MAX = float(np.log1p(-EPS) - np.log(EPS))


def build_export_model(predictor: Predictor):
    """One Keras model: image (N, H, W, 1) float32 in [0, 1] -> decision-scale scores (N, K).

    Each member model is followed by its calibrator (if fitted) and the members are averaged,
    as :meth:`Predictor.combine` does, so the output equals ``medtl predict``'s score columns.

    Example:
        >>> model = build_export_model(Predictor("runs/demo/cv-1a2b3c4d5e"))
        >>> model.output_shape
        (None, 1)
    """
    # why: Keras loads TensorFlow; only reached when exporting
    import keras

    members = predictor.models()
    h, w = (int(v) for v in predictor.info["preprocessing"]["image_size"])
    image = keras.Input((h, w, 1), dtype="float32", name="image")
    outs = []
    for i, (model, pp) in enumerate(zip(members, predictor.pps)):
        tag = f"fold{predictor.folds[i]}" if predictor.folds else "model"
        # Fold models share one name; a functional model needs unique names for its layers.
        model.name = f"{tag}_classifier"
        y = model(image)
        cal = _calibration_layer(pp, predictor.task, name=f"{tag}_calibration")
        outs.append(cal(y) if cal is not None else y)
    scores = keras.layers.Average(name="ensemble_mean")(outs) if len(outs) > 1 else outs[0]
    scores = keras.layers.Identity(name="scores", dtype="float32")(scores)
    model = keras.Model(image, scores, name="medtl_export")
    model(np.zeros((1, h, w, 1), np.float32))  # the ONNX and LiteRT exporters need a model that has run
    return model


def _name_only(value: str) -> str:
    """A hub backbone given by a local path is named by its last folder: no path leaves the run."""
    if ("/" in value or "\\" in value) and "://" not in value:
        return value.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]
    return value


def _rounded(v: Any) -> Any:
    return None if v is None else [float(x) for x in v]


def sidecar(predictor: Predictor, fmt: str, artefact: str) -> dict[str, Any]:
    """The sidecar's content: what a deployment needs to feed the graph and read its output.

    Built from model_info.json and postprocess.json values only (never a path, a file name of
    the data or a patient id).

    Example:
        >>> sidecar(Predictor(run), "onnx", "model.onnx")["score_columns"]
        ['score']
    """
    info = predictor.info
    h, w = (int(v) for v in info["preprocessing"]["image_size"])
    pps = [pp for pp in predictor.pps if pp is not None]
    calibrations = sorted({pp.calibration for pp in pps}) or ["none"]
    rule = pps[0].rule if pps else info.get("threshold_rule")
    if predictor.task == "multiclass":
        decision = "arg-max of the class scores"
    elif len(predictor.members) > 1:
        decision = f"score >= threshold; median of the folds' validation-chosen ({rule}) thresholds"
    elif pps:
        decision = f"score >= threshold; chosen on the validation split ({rule})"
    else:
        decision = "score >= threshold; saved with the model" if info.get("threshold") is not None else \
            "score >= 0.5 (no threshold saved with the model)"
    versions = {}
    for dist in ("medtl", "keras", "tensorflow"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return {
        "format": SIDECAR_FORMAT,
        "artefacts": {fmt: artefact},
        "task": predictor.task,
        "classes": list(predictor.classes),
        "score_columns": score_columns(predictor.task, predictor.classes),
        "output": ("float32 (N, K): the decision-scale scores medtl predict writes, in score_columns order "
                   "(binary: P(classes[1]))"),
        "thresholds": _rounded(predictor.thresholds),
        "decision": decision,
        "calibration": {"methods": calibrations, "in_graph": any(pp.calibrators for pp in pps),
                        "per_member": [pp.calibrators for pp in predictor.pps if pp is not None]},
        "ensemble": {"members": len(predictor.members), "folds": list(predictor.folds),
                     "combine": "mean of the members' calibrated scores" if len(predictor.members) > 1
                     else "one model"},
        "input": {"name": "image", "shape": [None, h, w, 1], "dtype": "float32", "range": [0.0, 1.0],
                  "note": INPUT_NOTE},
        "preprocessing": dict(info["preprocessing"]),
        "backbone": _name_only(str(info.get("backbone") or "")),
        "versions": versions,
    }


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: unknown export format; expected one of {', '.join(FORMATS)}")
    missing = []
    for dist in _NEEDS.get(fmt, ()):
        try:
            metadata.version(dist)
        except metadata.PackageNotFoundError:
            missing.append(dist)
    if missing:
        raise ImportError(f"--format {fmt}: needs {' and '.join(missing)}; install them with "
                          "pip install 'medtl[export]'")


def export_run(run_or_model: str | Path, out: str | Path, fmt: str = "savedmodel", overwrite: bool = False,
               check: Callable[[Path], None] | None = None) -> Path:
    """Export a run (any kind :class:`Predictor` takes) as one graph in ``out``, with the sidecar.

    Args:
        run_or_model: a CV run (ensemble or retrained final model), a training run or fold
            folder, or a ``model.keras`` with model_info.json beside it.
        out: output folder; gets ``saved_model/``, ``model.onnx`` or ``model.tflite`` and
            ``medtl_export.json``.
        fmt: ``savedmodel``, ``onnx`` or ``litert``.
        overwrite: replace an existing artefact of this format in ``out``.
        check: called with the sidecar's path once written (before the graph is exported);
            raises to stop the export (the API checks it for the run's PHI).

    Returns:
        The exported file or folder.

    Raises:
        ValueError: unknown format. ImportError: the format's converter is not installed.
        FileExistsError: the artefact exists and ``overwrite`` is False.

    Example:
        >>> export_run("runs/demo/cv-1a2b3c4d5e", "deploy/", fmt="savedmodel")
        PosixPath('deploy/saved_model')
    """
    _check_format(fmt)
    keras_format, name = FORMATS[fmt]
    out_dir = Path(out)
    target = out_dir / name
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target}: exists; pass --overwrite or choose another --out")
    predictor = Predictor(run_or_model)
    run_tta = str(getattr(predictor, "tta", "none"))
    if run_tta != "none":
        # Test-time views are resampled films, made outside the graph: the graph scores one view.
        # The sidecar's note says so; the predictor's threshold-views warning would only repeat it.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TTAMismatchWarning)
            predictor = Predictor(run_or_model, tta="none")
    out_dir.mkdir(parents=True, exist_ok=True)
    content = sidecar(predictor, fmt, name)
    content["test_time_augmentation"] = {
        "run": run_tta, "in_graph": False,
        "note": "none: the graph equals medtl predict" if run_tta == "none" else
        f"the run's predict.tta is {run_tta!r}; the graph scores the film as given (medtl predict "
        "without test-time augmentation); average its raw scores over the views yourself for medtl "
        f"predict's figures (the threshold was chosen on validation scores under {predictor.threshold_tta!r})"}
    old = out_dir / SIDECAR_FILE
    if old.is_file():
        # Several formats of the same run may share a folder: keep the others listed.
        prev = json.loads(old.read_text())
        if {k: v for k, v in prev.items() if k not in ("artefacts", "versions")} == \
                {k: v for k, v in content.items() if k not in ("artefacts", "versions")}:
            content["artefacts"] = {**prev.get("artefacts", {}), **content["artefacts"]}
    side = write_json(old, content)
    if check is not None:
        try:
            check(side)
        except Exception:
            side.unlink(missing_ok=True)
            raise
    model = build_export_model(predictor)
    tmp = out_dir / f".tmp-{name}"  # keeps the suffix: the LiteRT exporter insists on .tflite
    if tmp.is_dir():
        shutil.rmtree(tmp)
    tmp.unlink(missing_ok=True)
    model.export(str(tmp), format=keras_format, verbose=False)
    if target.is_dir():
        shutil.rmtree(target)
    tmp.replace(target)  # the artefact appears whole or not at all
    return target


def load_sidecar(out: str | Path) -> dict[str, Any]:
    """The sidecar JSON of an export folder.

    Example:
        >>> load_sidecar("deploy/")["classes"]
        ['normal', 'lesion']
    """
    return json.loads((Path(out) / SIDECAR_FILE).read_text())
