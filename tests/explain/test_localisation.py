"""Sanity checks of the maps of a model trained on the synthetic sample data (issue 5).

Localisation: a model trained on films with a lesion at a known place must put its heat map on
that lesion, in films of patients it never saw (on its own training films it could also
recognise the patient's anatomy). Model randomisation (Adebayo et al. 2018): re-initialising
its top block and head must change the maps."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from medtl.config import load_config
    from medtl.data.synthetic import make_sample_data
    from medtl.train.trainer import train

    work = tmp_path_factory.mktemp("localisation")
    csv = make_sample_data(work / "data", n_patients=40, seed=11)
    cfg = load_config(
        "configs/demo.yaml",
        overrides=[
            f"data.manifest={csv}",
            f"data.cache_dir={work / 'cache'}",
            f"output_dir={work / 'runs'}",
            "data.val_fraction=0.25",
            "train.stages.0.epochs=16",
        ],
    )
    res = train(cfg, progress=False)
    held_out = make_sample_data(work / "held-out", n_patients=30, seed=99, prevalence=0.5)
    return res, pd.read_csv(held_out), held_out.parent


def _true_positive_maps(trained, method):
    from medtl.explain.files import maps_for_files
    from medtl.run.predictor import predict_paths

    res, labels, root = trained
    pos = labels[labels["label"] == 1].reset_index(drop=True)
    paths = [str(root / f) for f in pos["file"]]
    scores = predict_paths(res.run_dir, paths)["score"].to_numpy()
    keep = scores >= 0.5
    assert keep.sum() >= 0.8 * len(paths), f"only {keep.sum()} of {len(paths)} lesions detected"
    fm = maps_for_files(res.run_dir, [p for p, k in zip(paths, keep) if k], method=method)
    rows = pos[keep]
    for p, (_, row) in zip(fm.maps, rows.iterrows()):
        assert fm.maps[p].shape == fm.films[p].shape  # at the film's own resolution
    return [(fm.maps[p], row) for p, (_, row) in zip(fm.maps, rows.iterrows())]


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam"])
def test_lesion_lies_in_the_hot_region_for_true_positives(trained, method):
    """The map at the lesion's centre reaches at least half the map's peak."""
    cases = _true_positive_maps(trained, method)
    hot = [m[int(row["lesion_y"]), int(row["lesion_x"])] >= 0.5 * m.max() for m, row in cases]
    assert np.mean(hot) >= 0.9, f"{method}: lesion centre in the hot region for {sum(hot)} of {len(hot)}"


@pytest.fixture(scope="module")
def faithful(trained):
    """Deletion/insertion AUCs of every registry method on 20 held-out true-positive films."""
    from medtl.data.pipeline import ImagePipeline
    from medtl.explain.faithfulness import faithfulness
    from medtl.models.classifier import load_model
    from medtl.run.predictor import Predictor, predict_paths

    res, labels, root = trained
    pos = labels[labels["label"] == 1].reset_index(drop=True)
    paths = [str(root / f) for f in pos["file"]]
    keep = predict_paths(res.run_dir, paths)["score"].to_numpy() >= 0.5
    pipe = ImagePipeline(Predictor(res.run_dir).pipeline_config())
    x = np.stack([pipe.load(p)[0] for p, k in zip(paths, keep) if k][:20])
    # Score-CAM on its 32 most active channels of 128: a quarter of the forward passes.
    return faithfulness(load_model(res.run_dir / "model.keras"), x, steps=10, seed=0, n_boot=500,
                        groups=pos["patient_id"][keep].tolist()[:20], batch_size=32,
                        options={"scorecam": {"top_channels": 32}})


# Replaces "the peak falls inside the lesion for 90% of true positives" (issue 21): the peak
# of a 16x16 map is no place to read a lesion's position (15-100% over seven training seeds,
# while the lesion centre was in the hot region for all; the notes are in git history,
# 2026-12-02..04). What the maps must do instead: hold the lesion in their hot region (above)
# and rank pixels the model needs above random ones (here).
@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "hirescam", "layercam", "intgrad",
                                    "scorecam", "occlusion"])
def test_every_method_is_more_faithful_than_a_random_map_by_deletion(faithful, method):
    """Blurring the map's top pixels first lowers the score faster than blurring random ones
    (smaller deletion AUC, paired over the same films). Measured on 40 films
    (benchmarks/bench_maps.py, 2026-12-04): random 0.816; Grad-CAM 0.175, Grad-CAM++ 0.168,
    HiResCAM 0.175, LayerCAM 0.168, Score-CAM 0.180, integrated gradients 0.740, occlusion 0.744."""
    e = faithful["methods"][method]
    assert e["deletion_vs_random"]["point"] < 0.0, (method, e["deletion"], faithful["random"]["deletion"])
    assert e["grid"][0] >= 15  # the report states this resolution


_COARSE = pytest.mark.xfail(strict=False, reason=(
    "measured on 40 films (2026-12-04): insertion AUC 0.745-0.764 for the 16x16 maps against 0.810 "
    "for random maps on the same 16x16 grid (0.820 pixel-wise), so the maps' grain is not why "
    "(an earlier guess): inserting the hot cells first into the blurred film raises the score "
    "more slowly than inserting random cells. Deletion separates them clearly"))


@pytest.mark.parametrize("method", [
    pytest.param(m, marks=_COARSE) for m in ("gradcam", "gradcam++", "hirescam", "layercam", "scorecam")
] + ["intgrad", "occlusion"])
def test_insertion_beats_a_random_map(faithful, method):
    """Inserting the map's top pixels first into the blurred film raises the score faster than
    inserting random ones. Measured: integrated gradients 0.893, occlusion 0.838, random 0.820."""
    e = faithful["methods"][method]
    rand = faithful["random_by_grid"][e["random_grid"]]
    assert e["insertion_vs_random"]["point"] > 0.0, (method, e["insertion"]["point"], rand["insertion"]["point"])


def _randomised(model_path, seed: int):
    """The saved model with its classifier and the last block's convolutions re-initialised."""
    import keras

    from medtl.models.classifier import load_model

    model = load_model(model_path)
    bb = model.get_layer("backbone")
    for layer in (model.get_layer("classifier"), bb.get_layer("cnn_block4_conv2"),
                  bb.get_layer("cnn_block4_conv1")):
        layer.kernel.assign(keras.initializers.GlorotUniform(seed=seed)(layer.kernel.shape))
    return model


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_randomising_the_top_block_changes_the_maps(trained, method):
    """Mean Spearman correlation between the trained model's maps of held-out lesion films and
    those after re-initialisation, over four re-initialisations, below 0.5 (measured on a model
    like this one: Grad-CAM 0.10, Grad-CAM++ 0.14). Grad-CAM++ fails the same check on the tiny
    model of test_cam.py, whose lesion shape can only be learned in the top block."""
    from scipy.stats import spearmanr

    from medtl.data.pipeline import ImagePipeline
    from medtl.run.predictor import Predictor
    from medtl.explain.cam import compute_cam
    from medtl.models.classifier import load_model

    res, labels, root = trained
    model_path = res.run_dir / "model.keras"
    pipe = ImagePipeline(Predictor(res.run_dir).pipeline_config())
    x = np.stack([pipe.load(str(root / f))[0] for f in labels[labels["label"] == 1]["file"][:20]])
    maps = compute_cam(load_model(model_path), x, method=method)
    assert (maps.max(axis=(1, 2)) == 1.0).all()  # non-trivial maps are being compared
    rho = []
    for seed in range(4):
        other = compute_cam(_randomised(model_path, seed), x, method=method)
        rho.append(np.mean(np.nan_to_num([spearmanr(a.ravel(), b.ravel())[0]
                                          for a, b in zip(maps, other)])))
    assert np.mean(rho) < 0.5, f"{method}: Spearman {np.round(rho, 2)}"
