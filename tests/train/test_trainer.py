"""The staged trainer: run folder contents, best-model keeping, early stopping, feature cache."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest

from tests.train.conftest import crash_after_epoch, tiny_config


def _weights(path) -> list[np.ndarray]:
    from medtl.models.classifier import load_model

    return load_model(path).get_weights()


def test_run_folder_holds_every_artifact(reference_run):
    from medtl.config import load_resolved

    cfg, res = reference_run
    d = res.run_dir
    for name in ("config.yaml", "model.keras", "model_info.json", "metrics.json", "history.csv",
                 "history_stage1.csv", "history_stage2.csv", "val_predictions.csv", "postprocess.json"):
        assert (d / name).is_file(), name
    assert not (d / "skipped.csv").exists()
    assert load_resolved(d / "config.yaml").to_dict() == cfg.to_dict()
    assert list((d / "tensorboard" / "train").glob("events.out.tfevents.*"))
    assert list((d / "tensorboard" / "validation").glob("events.out.tfevents.*"))

    hist = pd.read_csv(d / "history.csv")
    assert hist[["stage", "epoch"]].values.tolist() == [[1, 1], [1, 2], [2, 1], [2, 2]]
    assert len(pd.read_csv(d / "history_stage2.csv")) == 2
    metrics = json.loads((d / "metrics.json").read_text())
    assert metrics["epochs_run"] == 4 and metrics["monitor"] == "val_roc_auc"
    best = metrics["best"]
    assert best["value"] == pytest.approx(hist["val_roc_auc"].max())
    row = hist[(hist.stage == best["stage"]) & (hist.epoch == best["epoch"])].iloc[0]
    assert metrics["best_val_metrics"]["val_loss"] == pytest.approx(row["val_loss"])
    assert [s["epochs_run"] for s in metrics["stages"]] == [2, 2]
    assert metrics["stages"][1]["trainable_params"] > metrics["stages"][0]["trainable_params"]
    assert metrics["n_train"] + metrics["n_val"] == len(pd.read_csv(cfg.data.manifest))

    info = json.loads((d / "model_info.json").read_text())
    assert info["task"] == "binary" and info["classes"] == metrics["classes"]
    assert info["preprocessing"] == {"image_size": [32, 32], "keep_aspect": True, "window": "auto", "frame": None,
                                     "max_pixels": 50_000_000}
    # The threshold of evaluate.threshold, chosen on the validation split (the raw-score one).
    pp = json.loads((d / "postprocess.json").read_text())
    assert info["threshold"] == pytest.approx(pp["raw_thresholds"][0])
    assert info["threshold_rule"].startswith(cfg.evaluate.threshold)

    val = pd.read_csv(d / "val_predictions.csv")
    assert list(val.columns) == ["path", "patient_id", "label", "score"]
    assert len(val) == metrics["n_val"] and val["score"].between(0, 1).all()
    train_patients = set(pd.read_csv(cfg.data.manifest)["patient_id"]) - set(val["patient_id"])
    assert len(train_patients) == metrics["n_train_patients"]


def test_model_on_disk_is_the_returned_best_model(reference_run):
    _, res = reference_run
    for a, b in zip(_weights(res.model_path), res.model.get_weights()):
        np.testing.assert_array_equal(a, b)
    # Only the state and the best weights (its stage's start + what the stage trained) are
    # left in ckpt/ once the run has finished.
    names = sorted(p.name for p in (res.run_dir / "ckpt").iterdir())
    best = res.metrics["best"]
    assert names == [f"best-{best['global_epoch'] - 1:04d}.weights.npz",
                     f"stage{best['stage']}-start.weights.npz", "state.json"]


def test_bad_stage_leaves_the_best_model_and_the_next_stage_starts_from_it(tiny_data, tmp_path, capsys):
    """Stage 2 blows the weights up (SGD at lr 1e3); the model must come out of stage 1's best."""
    from medtl.train.trainer import train

    # A copy of the data with one corrupt file, which data.on_error: skip must list.
    data = tmp_path / "data"
    shutil.copytree(tiny_data.parent, data)
    (data / "images" / "broken.dcm").write_bytes(b"not a dicom file at all")
    df = pd.read_csv(data / "labels.csv")
    extra = df.iloc[[0]].assign(file="images/broken.dcm", patient_id="P9999")
    pd.concat([df, extra]).to_csv(data / "labels.csv", index=False)

    cfg = tiny_config(
        data / "labels.csv", tmp_path,
        data={"on_error": "skip", "window": "percentile"},
        augment={"preset": "none"},
        train={"monitor": "val_loss", "patience": 1, "feature_cache": True,
               "stages": [{"unfreeze": "head", "epochs": 2, "lr": 1e-2},
                          {"unfreeze": "all", "epochs": 3, "lr": 1e3, "optimizer": "sgd"},
                          {"unfreeze": "head", "epochs": 1, "lr": 1e-12}]},
    )
    res = train(cfg, run_dir=tmp_path / "run")
    out = capsys.readouterr().out

    hist, m = res.history, res.metrics
    assert m["best"]["stage"] == 1
    stage1_best = hist[hist.stage == 1]["val_loss"].min()
    assert m["best"]["value"] == pytest.approx(stage1_best)
    s2 = hist[hist.stage == 2]["val_loss"]
    assert len(s2) == 1 and not (s2.iloc[0] < stage1_best)  # worse (or NaN): early stop
    assert m["stages"][1]["stopped_early"] and not m["stages"][1]["improved_overall"]
    # Stage 3 (lr 1e-12) starts from the restored stage-1 weights, not the exploded ones.
    assert hist[hist.stage == 3]["val_loss"].iloc[0] == pytest.approx(stage1_best, rel=1e-4)
    assert np.isfinite(res.val_predictions["score"]).all()
    assert m["stages"][0]["feature_cache"] and not m["stages"][1]["feature_cache"]

    skipped = pd.read_csv(res.run_dir / "skipped.csv")
    assert skipped["path"].str.endswith("broken.dcm").tolist() == [True]
    assert f"Skipped 1 unreadable file(s) (data.on_error: skip); listed in {res.run_dir / 'skipped.csv'}" in out
    info = json.loads((res.run_dir / "model_info.json").read_text())
    assert info["preprocessing"]["window"] == "percentile"

    assert "Stage 1/3: head only, lr 0.01, 2 epochs, 1,281 trainable params, cached features" in out
    assert "Stage 2/3: all layers, lr 1000, 3 epochs" in out
    assert "Stage 2: early stop" in out
    assert sum(line.startswith("Epoch ") for line in out.splitlines()) == len(hist)


def test_split_head_shares_the_model_weights(tiny_data, tmp_path):
    from medtl.models import build_model
    from medtl.train.feature_cache import split_head

    model = build_model(tiny_config(tiny_data, tmp_path), 1)
    extractor, head = split_head(model)
    x = np.random.default_rng(0).random((3, 32, 32, 1)).astype("float32")
    feats = extractor.predict(x, verbose=0)
    assert feats.shape == (3, 1280)  # pooled: the cache stores vectors, not feature maps
    np.testing.assert_allclose(head.predict(feats, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    kernel = head.get_layer("classifier").kernel
    kernel.assign(kernel.numpy() + 1.0)
    np.testing.assert_allclose(head.predict(feats, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_cv_style_call_with_indices_and_leakage_guard(tiny_data, tmp_path):
    from medtl.data.manifest import load_manifest
    from medtl.data.splits import LeakageError
    from medtl.train.trainer import train

    cfg = tiny_config(tiny_data, tmp_path, augment={"preset": "none"},
                      train={"feature_cache": True, "stages": [{"unfreeze": "head", "epochs": 1}]})
    m = load_manifest(cfg)
    patients = m.df["patient_id"].to_numpy()
    # One film of the first patient in validation, the patient's other films in training.
    with pytest.raises(LeakageError, match=str(patients[0])):
        train(cfg, m, np.arange(1, len(m)), [0], run_dir=tmp_path / "leak", progress=False)

    labels = m.df["label"].to_numpy()
    val_p = [patients[labels == 0][0], patients[labels == 1][0]]
    val_idx = np.flatnonzero(np.isin(patients, val_p))
    train_idx = np.flatnonzero(~np.isin(patients, val_p))
    res = train(cfg, m, train_idx, val_idx, run_dir=tmp_path / "fold", progress=False)
    assert res.val_predictions["path"].tolist() == m.df["path"].iloc[val_idx].tolist()
    assert res.metrics["n_train"] == len(train_idx)


def test_unknown_monitor_names_the_logged_metrics(tiny_data, tmp_path):
    from medtl.config import ConfigError
    from medtl.train.trainer import train

    cfg = tiny_config(tiny_data, tmp_path, augment={"preset": "none"},
                      train={"monitor": "val_auc", "feature_cache": True,
                             "stages": [{"unfreeze": "head", "epochs": 1}]})
    with pytest.raises(ConfigError, match="train.monitor: 'val_auc'.*val_roc_auc"):
        train(cfg, run_dir=tmp_path / "run", progress=False)


def test_existing_run_needs_resume_and_the_same_config(reference_run, tiny_data, tmp_path):
    from medtl.config import ConfigError
    from medtl.train.trainer import train

    cfg, res = reference_run
    with pytest.raises(FileExistsError, match="resume="):
        train(cfg, run_dir=res.run_dir, progress=False)
    other = tiny_config(tiny_data, tmp_path, seed=8)
    other.output_dir, other.data.cache_dir = cfg.output_dir, cfg.data.cache_dir
    with pytest.raises(ConfigError, match=r"seed \(7 -> 8\)"):
        train(other, resume=res.run_dir, progress=False)


def test_stage_seed_and_monitor_mode():
    from medtl.train.early_stopping import better as _better
    from medtl.train.trainer import monitor_mode, stage_seed

    assert stage_seed(1, 0, 0) == stage_seed(1, 0, 0) != stage_seed(1, 0, 1) != stage_seed(1, 1, 0)
    assert monitor_mode("val_loss") == "min" and monitor_mode("val_roc_auc") == "max"
    assert _better([0.9, -0.3], [0.9, -0.4], "max")  # tie on AUC: lower loss wins
    assert not _better([math.nan, 0.0], [0.5, 0.0], "max")
    assert _better([0.1, 0.0], [math.nan, 0.0], "min")
    assert not _better([0.5, 0.0], [0.5, 0.0], "max")


def test_epoch_progress_one_line_per_epoch_or_a_live_bar(capsys):
    import io

    from medtl.train.callbacks import EpochProgress

    stream = io.StringIO()
    cb = EpochProgress(epochs=5, first_epoch=10, steps=3, tty=False, stream=stream)
    cb.on_epoch_begin(11)
    cb.on_train_batch_end(0, {"loss": 0.9})
    cb.on_epoch_end(11, {"loss": 0.5, "val_roc_auc": 0.75})
    line = stream.getvalue().strip()
    assert line.startswith("Epoch 2/5 - ") and line.endswith("loss 0.5000 - val_roc_auc 0.7500")

    bar = EpochProgress(epochs=5, first_epoch=0, steps=3, tty=True)
    bar.on_epoch_begin(0)
    for b in range(3):
        bar.on_train_batch_end(b, {"loss": 0.9})
    bar.on_epoch_end(0, {"loss": 0.5, "val_loss": 0.6})
    out = capsys.readouterr().out
    assert out.startswith("Epoch 1/5\n") and "3/3" in out and "val_loss: 0.6" in out


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_multiclass_and_multilabel_runs_predict_like_training(task, tiny_data, tmp_path):
    from medtl.run.predictor import predict_paths
    from medtl.train.trainer import train

    df = pd.read_csv(tiny_data)
    films = df.groupby("patient_id").cumcount()  # 0, 1, 2 within each patient
    if task == "multiclass":
        df["grade"] = np.where(df["label"] == 1, "lesion", np.where(films == 0, "clear", "hazy"))
        data, train_cfg = {"label_column": "grade"}, {"loss": {"name": "cce"}}
    else:
        df["lesion"], df["second_film"] = df["label"], (films > 0).astype(int)
        data, train_cfg = {"label_column": ["lesion", "second_film"]}, {}
    csv = tiny_data.parent / f"labels_{task}.csv"
    df.to_csv(csv, index=False)
    cfg = tiny_config(csv, tmp_path, task=task, data=data, augment={"preset": "none"},
                      train={"feature_cache": True, "stages": [{"unfreeze": "head", "epochs": 1}],
                             **train_cfg})
    res = train(cfg, run_dir=tmp_path / "run", progress=False)

    classes = res.metrics["classes"]
    score_cols = [f"score_{c}" for c in classes]
    val = res.val_predictions
    assert score_cols == [c for c in val.columns if c.startswith("score_")]
    if task == "multiclass":
        assert sorted(classes) == ["clear", "hazy", "lesion"]
        np.testing.assert_allclose(val[score_cols].sum(axis=1), 1.0, atol=1e-5)
    else:
        assert classes == ["lesion", "second_film"]
        assert {"label_lesion", "label_second_film"} <= set(val.columns)
    out = predict_paths(res.run_dir, val["path"].tolist())
    np.testing.assert_allclose(out[score_cols], val[score_cols], atol=1e-5)
    if task == "multiclass":
        assert out["prediction"].tolist() == [classes[i] for i in val[score_cols].to_numpy().argmax(1)]
    else:
        expect = [";".join(c for c, v in zip(classes, row) if v >= 0.5) for row in val[score_cols].to_numpy()]
        assert out["prediction"].tolist() == expect


def test_from_scratch_backbone_keeps_its_learned_batchnorm_statistics(tiny_data, tmp_path):
    """A backbone trained from random weights learns BatchNorm moving statistics; the best-epoch
    checkpoint and the saved model must carry them (a restore of trainable weights alone left
    them at their initial values and made every prediction the same)."""
    from medtl.models.classifier import load_model
    from medtl.train.trainer import train

    cfg = tiny_config(
        tiny_data, tmp_path, augment={"preset": "none"},
        model={"backbone": "smallcnn", "weights": "none", "dropout": 0.0},
        train={"stages": [{"unfreeze": "all", "epochs": 3, "lr": 1e-3}]},
    )
    res = train(cfg, progress=False)
    model = load_model(res.model_path)
    bn = model.get_layer("backbone").get_layer("cnn_block1_bn1")
    assert not np.allclose(keras_np(bn.moving_mean), 0.0), "moving mean never left its initial value"
    assert not np.allclose(keras_np(bn.moving_variance), 1.0)
    scores = res.val_predictions["score"].to_numpy()
    assert np.ptp(scores) > 1e-4, "every validation film got the same score"


def keras_np(v):
    import keras

    return keras.ops.convert_to_numpy(v)


# --------------------------------------------------------------------------------------------
# Fixed epochs without a validation split (the final model of evaluate.final_model: retrain)


def _fixed_config(tiny_data, work):
    # No augmentation: the head stage trains on cached features in fixed mode too.
    return tiny_config(tiny_data, work, augment={"preset": "none"}, train={"feature_cache": True})


@pytest.fixture(scope="module")
def fixed_run(tiny_data, tmp_path_factory):
    """An uninterrupted fixed-epoch run on every image: 1 epoch of stage 1, 3 of stage 2."""
    from medtl.train.trainer import train

    work = tmp_path_factory.mktemp("fixed")
    cfg = _fixed_config(tiny_data, work)
    return cfg, train(cfg, run_dir=work / "run", fixed_epochs=[1, 3], progress=False)


def test_fixed_epochs_run_exactly_those_epochs_on_all_images_and_keep_the_last(fixed_run):
    from medtl.models import build_model
    from medtl.train.checkpoint import load_weights as _load_weights

    cfg, res = fixed_run
    d, m = res.run_dir, res.metrics
    n = len(pd.read_csv(cfg.data.manifest))
    hist = pd.read_csv(d / "history.csv")
    assert hist[["stage", "epoch"]].values.tolist() == [[1, 1], [2, 1], [2, 2], [2, 3]]
    assert not any(c.startswith("val_") for c in hist.columns) and "best" not in hist.columns
    assert m["mode"] == "fixed_epochs" and m["fixed_epochs"] == [1, 3] and m["best"] is None
    assert m["epochs_run"] == 4 and m["last"] == {"stage": 2, "epoch": 3, "global_epoch": 4}
    assert [s["epochs_planned"] for s in m["stages"]] == [1, 3] == [s["epochs_run"] for s in m["stages"]]
    assert m["stages"][0]["feature_cache"] and not m["stages"][1]["feature_cache"]
    assert m["n_train"] == n and m["n_val"] == 0
    assert m["last_train_metrics"]["loss"] == pytest.approx(hist["loss"].iloc[-1])
    assert not (d / "val_predictions.csv").exists() and res.val_predictions.empty
    # Cosine decay over max(configured 2, fixed 3) epochs: the rate (logged at each epoch's
    # end) reaches 0 at the end of the 3rd epoch, not of the 2nd.
    lr = hist[hist.stage == 2]["lr"].to_numpy()
    assert lr[0] > lr[1] > 0 and lr[2] == pytest.approx(0.0, abs=1e-12)

    # model.keras is the last epoch's weights: stage 2's start plus what its 3rd epoch left,
    # the only weight files kept, and not the stage's starting point.
    ckpt = sorted(p.name for p in (d / "ckpt").iterdir())
    assert ckpt == ["epoch-0003.weights.npz", "stage2-start.weights.npz", "state.json"]
    saved = _weights(res.model_path)
    for a, b in zip(saved, res.model.get_weights()):
        np.testing.assert_array_equal(a, b)
    rebuilt = build_model(cfg, 1)
    _load_weights(rebuilt, [d / "ckpt" / "stage2-start.weights.npz"])
    start = rebuilt.get_weights()
    _load_weights(rebuilt, [d / "ckpt" / "epoch-0003.weights.npz"])
    for a, b in zip(saved, rebuilt.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(saved, start))


def test_fixed_epochs_resume_after_a_crash_to_the_same_weights(fixed_run, monkeypatch):
    from medtl.config import ConfigError
    from medtl.train import trainer

    cfg, ref = fixed_run
    run = ref.run_dir.parent / "crashed"
    with crash_after_epoch(monkeypatch, 2):  # mid stage 2: the optimizer state must come back too
        trainer.train(cfg, run_dir=run, fixed_epochs=[1, 3], progress=False)
    with pytest.raises(ConfigError, match=r"fixed_epochs \[1, 3\], not fixed_epochs \[1, 2\]"):
        trainer.train(cfg, resume=run, fixed_epochs=[1, 2], progress=False)

    res = trainer.train(cfg, resume=run, progress=False)  # the epochs come from the checkpoint
    assert res.history[["stage", "epoch"]].values.tolist() == [[1, 1], [2, 1], [2, 2], [2, 3]]
    for a, b in zip(_weights(res.model_path), _weights(ref.model_path)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    again = trainer.train(cfg, resume=run, progress=False)  # finished: re-read, not retrained
    assert again.model is None and again.val_predictions.empty and again.metrics == res.metrics


def test_fixed_epochs_arguments_are_checked(reference_run, tiny_data, tmp_path):
    from medtl.config import ConfigError
    from medtl.train.trainer import train

    cfg, ref = reference_run
    with pytest.raises(ValueError, match="one whole number >= 1 for each of the 2 stage"):
        train(cfg, run_dir=tmp_path / "a", fixed_epochs=[2], progress=False)
    with pytest.raises(ValueError, match="one whole number"):
        train(cfg, run_dir=tmp_path / "b", fixed_epochs=[2, 0], progress=False)
    with pytest.raises(ValueError, match="pass val_idx=None"):
        train(cfg, None, [0, 1], [2, 3], run_dir=tmp_path / "c", fixed_epochs=[1, 1], progress=False)
    with pytest.raises(ConfigError, match="a validation split"):
        train(cfg, resume=ref.run_dir, fixed_epochs=[1, 1], progress=False)


def test_validation_threshold_is_chosen_on_the_predict_tta_scores(tiny_data, tmp_path, monkeypatch):
    """Issue 19: with predict.tta the trainer scores the validation split with the same views as
    predict (one code path, medtl.run.tta), chooses the threshold on those scores and records
    the mode; predicting with the run's own views then reproduces them and warns of nothing."""
    import warnings

    from medtl.evaluate import choose_threshold
    from medtl.run.files import read_postprocess
    from medtl.run.predictor import Predictor, TTAMismatchWarning
    from medtl.train import trainer
    from tests.train.conftest import tiny_weights

    cfg = tiny_config(tiny_data, tmp_path, augment={"preset": "none"}, predict={"tta": "shift"},
                      train={"feature_cache": True, "stages": [{"unfreeze": "head", "epochs": 1}]})
    seen = []
    real = trainer.predict_dataset_views

    def spy(model, xs, views):
        seen.append([v.__name__ for v in views])
        return real(model, xs, views)

    monkeypatch.setattr(trainer, "predict_dataset_views", spy)
    res = trainer.train(cfg, run_dir=tmp_path / "run", progress=False)
    assert len(seen) == 1 and len(seen[0]) == 5 and seen[0][0] == "_identity"  # the shift views, once
    val = pd.read_csv(res.run_dir / "val_predictions.csv")
    pp = read_postprocess(res.run_dir)
    assert pp.tta == "shift" and res.val_tta == "shift" and res.metrics["val_tta"] == "shift"
    assert pp.thresholds[0] == pytest.approx(choose_threshold(val["label"], val["score"], pp.rule))

    with warnings.catch_warnings():
        warnings.simplefilter("error", TTAMismatchWarning)
        same = Predictor(res.run_dir)  # the run's own predict.tta: shift
    assert same.tta == "shift"
    np.testing.assert_allclose(same.predict_paths(val["path"].tolist())["score"], val["score"], atol=1e-5)
    with pytest.warns(TTAMismatchWarning, match="predict.tta 'shift'.*predict.tta 'none'"):
        single = Predictor(res.run_dir, tta="none")
    if tiny_weights() != "none":  # a random backbone scores every film alike, whatever the view
        assert not np.allclose(single.predict_paths(val["path"].tolist())["score"], val["score"], atol=1e-5)
