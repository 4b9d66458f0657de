"""Every config in configs/ loads, validates, and trains one tiny step.

The training check keeps each config as it is (columns, classes, task, backbone, loss, first
stage) and overrides only what a test machine cannot have or afford:
the data (a tiny synthetic set written with the config's own column names), pretrained weights
(none: nothing can be downloaded here), the image size (32 px; the TF Hub model keeps its 224),
the batch size, and one epoch of the config's first stage. Each of the config's stages is then
checked to be a valid unfreeze for its backbone (without training it: unfrozen DenseNet121 takes
a minute to trace on a CPU).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from medtl.config import Config, config_from_dict, load_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
# The largest backbones take longest to trace and step, even at 32 px.
SLOW = {"multilabel_chestxray"}


def _ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


def test_the_configs_folder_has_the_documented_configs():
    names = set(_ids(CONFIGS))
    assert {"demo", "pneumonia_vgg16", "pneumonia_resnet50", "hub_efficientnet", "multilabel_chestxray"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=_ids(CONFIGS))
def test_config_loads_and_validates(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert cfg.name and cfg.train.stages
    # Relative manifests resolve against the config's own folder.
    raw = yaml.safe_load(path.read_text())
    manifest = raw["data"]["manifest"]
    expected = Path(manifest) if Path(manifest).is_absolute() else (path.parent / manifest).resolve()
    assert Path(cfg.data.manifest) == expected
    if cfg.task == "multilabel":
        assert isinstance(cfg.data.label_column, list) and len(cfg.data.label_column) >= 2
    elif cfg.task == "binary" and cfg.data.classes is not None:
        assert len(cfg.data.classes) == 2


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory) -> Path:
    """labels.csv of 8 synthetic patients (about 20 films of 64 px, half with lesions)."""
    from medtl.data.synthetic import make_sample_data

    return make_sample_data(tmp_path_factory.mktemp("configs_data"), n_patients=8, seed=11,
                            image_size=(64, 64), prevalence=0.5)


def _tiny_csv(raw: dict, tiny: Path, out: Path) -> Path:
    """The tiny set as a CSV with the columns and label values the config expects."""
    data = raw["data"]
    path_col = data.get("path_column", "file")
    label_col = data.get("label_column", "label")
    patient_col = data.get("patient_column")
    classes = data.get("classes")
    with tiny.open() as fh:
        rows = list(csv.DictReader(fh))
    rng = np.random.default_rng(0)
    out_rows = []
    for i, r in enumerate(rows):
        lesion = int(r["label"])
        row = {path_col: str(tiny.parent / r["file"])}
        if isinstance(label_col, list):
            row[label_col[0]] = lesion
            for col in label_col[1:]:
                row[col] = int(rng.random() < 0.5) if i >= 2 else i  # both values present
        else:
            row[label_col] = classes[lesion] if classes else lesion
        if patient_col and not patient_col.startswith("dicom:") and patient_col.lower() != "none":
            row[patient_col] = r["patient_id"]
        out_rows.append(row)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(out_rows[0]))
        w.writeheader()
        w.writerows(out_rows)
    return out


def _tiny_override(path: Path, tiny: Path, work: Path, request) -> Config:
    raw = yaml.safe_load(path.read_text())
    raw["data"]["manifest"] = str(_tiny_csv(raw, tiny, work / "labels.csv"))
    raw["data"]["cache_dir"] = str(work.parent / "cache")
    raw["data"]["workers"] = 1
    raw["data"]["val_fraction"] = 0.35  # 3 patient-grouped parts: 8 patients fill them
    raw["output_dir"] = str(work / "runs")
    model = raw.setdefault("model", {})
    if str(model.get("backbone", "")).startswith("hub:"):
        # tfhub.dev cannot be reached here: the same model family from ../shared, at its 224 px.
        model["backbone"] = f"hub:{request.getfixturevalue('hub_efficientnet_dir')}"
    else:
        raw["data"]["image_size"] = [32, 32]
    model["weights"] = "none"  # ImageNet weights cannot be downloaded here
    train = raw.setdefault("train", {})
    first = dict(load_config(path).train.stages[0].__dict__)
    train["stages"] = [{**first, "epochs": 1}]
    train["batch_size"] = 4
    return config_from_dict(raw, base_dir=path.parent)


@pytest.mark.parametrize(
    "path",
    [pytest.param(p, marks=pytest.mark.slow) if p.stem in SLOW else p for p in CONFIGS],
    ids=_ids(CONFIGS),
)
def test_tiny_override_trains_one_step(path, tiny_set, tmp_path, request):
    from medtl.train.stages import set_trainable
    from medtl.train.trainer import train

    cfg = _tiny_override(path, tiny_set, tmp_path / path.stem, request)
    result = train(cfg, run_dir=tmp_path / "run", progress=False)

    assert (tmp_path / "run" / "model.keras").is_file()
    val = result.val_predictions
    scores = val[[c for c in val.columns if c.startswith("score")]].to_numpy(dtype=np.float64)
    assert len(val) > 0 and scores.shape[1] >= 1
    assert np.isfinite(scores).all() and (scores >= 0).all() and (scores <= 1).all()
    assert math.isfinite(result.history["loss"].iloc[-1])

    # Every stage of the real config is a valid unfreeze for its backbone, each training at
    # least as much as the one before.
    sizes = []
    for st in load_config(path).train.stages:
        assert set_trainable(result.model, st.unfreeze)
        sizes.append(sum(int(np.prod(w.shape)) for w in result.model.trainable_weights))
    assert sizes == sorted(sizes)
    if cfg.report.target_layer:
        from medtl.explain.cam import spatial_layers

        assert cfg.report.target_layer in spatial_layers(result.model)
