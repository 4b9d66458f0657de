"""train.swa_epochs: the weight average of the last stage's epochs up to the best one.

The averaging and the window are checked by known answers without a model; the trainer on one
tiny from-scratch run (trainable BatchNorm, so the statistics are re-estimated) that is
interrupted after its last epoch, so the epochs' weight files can be read before the average
is decided, and then resumed (with the decision forced either way where that is the point).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from medtl.config import ConfigError, config_from_dict
from medtl.train.checkpoint import Checkpointer
from medtl.train.state import RunState
from medtl.train.swa import average_weight_files, average_weights, needed_epochs, swa_window
from tests.train.conftest import Crash, crash_after_epoch, tiny_config, tiny_raw

# --------------------------------------------------------------------------------------------
# Known answers, no model


def test_average_of_weight_lists_is_the_numpy_mean():
    rng = np.random.default_rng(0)
    lists = [[rng.normal(size=(3, 4)).astype("float32"), rng.normal(size=5).astype("float32")] for _ in range(3)]
    out = average_weights(lists)
    for i in range(2):
        expect = np.mean([ws[i].astype(np.float64) for ws in lists], axis=0)
        assert out[i].dtype == np.float32
        np.testing.assert_allclose(out[i], expect, rtol=1e-6)
    np.testing.assert_array_equal(average_weights([[np.array([1.0, 2.0])], [np.array([3.0, 6.0])]])[0], [2.0, 4.0])
    # Integer arrays (counters, seed states) cannot be averaged: the last checkpoint's value.
    np.testing.assert_array_equal(average_weights([[np.array([1, 7])], [np.array([4, 2])]])[0], [4, 2])
    with pytest.raises(ValueError, match="no weights"):
        average_weights([])
    with pytest.raises(ValueError, match="shapes"):
        average_weights([[np.zeros(2)], [np.zeros(3)]])
    with pytest.raises(ValueError, match="same"):
        average_weights([[np.zeros(2)], [np.zeros(2), np.zeros(2)]])


def test_average_of_weight_files(tmp_path):
    for i, (a, b) in enumerate([(1.0, 10.0), (3.0, 20.0), (8.0, 60.0)]):
        np.savez(tmp_path / f"e{i}.npz", w2=np.full((2, 2), a, np.float32), w5=np.array([b], np.float32))
    avg = average_weight_files([tmp_path / f"e{i}.npz" for i in range(3)])
    assert sorted(avg) == ["w2", "w5"]
    np.testing.assert_allclose(avg["w2"], np.full((2, 2), 4.0))
    np.testing.assert_allclose(avg["w5"], [30.0])
    np.savez(tmp_path / "other.npz", w3=np.zeros(1, np.float32))
    with pytest.raises(ValueError, match="other variables"):
        average_weight_files([tmp_path / "e0.npz", tmp_path / "other.npz"])


def _saved(epochs, first_gid=10):
    return [{"epoch": e, "global_epoch": first_gid + e, "file": f"f{e}"} for e in epochs]


def test_the_window_ends_at_the_best_epoch_of_the_last_stage():
    saved = _saved([1, 2, 3, 4, 5])
    best = {"stage": 3, "epoch": 4, "global_epoch": 14}
    window, why = swa_window(saved, best, last_stage=3, n=3)
    assert why is None and [w["epoch"] for w in window] == [2, 3, 4]
    window, _ = swa_window(saved, {**best, "epoch": 2}, last_stage=3, n=3)  # fewer epochs before the best
    assert [w["epoch"] for w in window] == [1, 2]
    window, why = swa_window(saved, {**best, "epoch": 1}, last_stage=3, n=3)
    assert window == [] and "epoch 1 of stage 3" in why
    window, why = swa_window(saved, {"stage": 2, "epoch": 3, "global_epoch": 8}, last_stage=3, n=3)
    assert window == [] and "the best epoch is in stage 2, not in the last stage (3)" in why
    with pytest.raises(RuntimeError, match=r"epoch\(s\) \[3\] of stage 3"):
        swa_window(_saved([1, 2, 4]), best, last_stage=3, n=3)


def test_only_the_epochs_a_later_average_can_need_are_kept():
    # n=3 after epoch 6, best so far epoch 2: the window of the best (1-2) and the 2 latest
    # epochs, which a best still to come would average with.
    assert [w["epoch"] for w in needed_epochs(_saved(range(1, 7)), 6, 2, 3)] == [1, 2, 5, 6]
    assert [w["epoch"] for w in needed_epochs(_saved(range(1, 7)), 6, None, 3)] == [5, 6]
    assert [w["epoch"] for w in needed_epochs(_saved(range(1, 7)), None, 5, 3)] == [3, 4, 5]  # stage over


def test_checkpointer_keeps_the_window_files_and_prunes_the_rest(tmp_path):
    from tests.train.test_checkpoint import _bump, _model

    model = _model()
    ck = Checkpointer(tmp_path / "ckpt")
    ck.on_run_start()
    state = RunState()
    ck.on_stage_start(state, 0, model, keep_epochs=3)
    model.optimizer.build(model.trainable_variables)

    def epoch(e: int, improved: bool, end: bool = False) -> list[str]:
        _bump(model, 1.0)
        if improved:  # what EarlyStopping records before the checkpoint
            state.best_at = {"stage": 1, "epoch": e + 1, "global_epoch": state.global_epoch + 1}
        ck.on_epoch_end(state, 0, e, model, model, end_of_stage=end, improved=improved)
        state.global_epoch += 1
        ck.save_state(state)
        ck.prune(state)
        return sorted(p.name for p in ck.dir.glob("*.weights.npz") if not p.name.startswith("stage"))

    assert epoch(0, True) == ["best-0000.weights.npz"]
    assert epoch(1, True) == ["best-0000.weights.npz", "best-0001.weights.npz"]  # both in the best's window
    assert epoch(2, False) == ["best-0000.weights.npz", "best-0001.weights.npz", "epoch-0002.weights.npz"]
    assert epoch(3, False) == ["best-0000.weights.npz", "best-0001.weights.npz", "epoch-0002.weights.npz",
                               "epoch-0003.weights.npz"]
    # Epoch 3 is neither in the best's window (1-2) nor among the 2 latest (4-5): it goes.
    assert epoch(4, False) == ["best-0000.weights.npz", "best-0001.weights.npz", "epoch-0003.weights.npz",
                               "epoch-0004.weights.npz"]
    # The stage ends without improving: only the best's window is left.
    assert epoch(5, False, end=True) == ["best-0000.weights.npz", "best-0001.weights.npz"]
    window, why = swa_window(state.swa_saved, state.best_at, last_stage=1, n=3)
    assert why is None and [w["file"] for w in window] == ["best-0000.weights.npz", "best-0001.weights.npz"]


@pytest.mark.parametrize("value", [-1, 1, "three", 2.5, True])
def test_swa_epochs_is_validated_with_a_one_line_error(tiny_data, tmp_path, value):
    raw = tiny_raw(tiny_data, tmp_path)
    raw["train"]["swa_epochs"] = value
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw)
    msg = str(err.value)
    assert msg.startswith("train.swa_epochs: invalid value") and repr(value) in msg and "\n" not in msg
    if value in (-1, 1) and not isinstance(value, bool):  # True == 1
        assert "expected 0 (off) or >= 2" in msg


def test_swa_epochs_defaults_to_off_and_takes_an_override(tiny_data, tmp_path):
    raw = tiny_raw(tiny_data, tmp_path)
    assert config_from_dict(raw).train.swa_epochs == 0
    assert config_from_dict(raw, overrides=["train.swa_epochs=3"]).train.swa_epochs == 3


# --------------------------------------------------------------------------------------------
# The trainer


N = 2  # train.swa_epochs of the tiny runs
EPOCHS = 4


def _swa_config(tiny_data, work):
    # From random weights, all layers: the BatchNorm layers train, so the average's statistics
    # must be re-estimated. val_loss rather than val_roc_auc, which is 1.0 for several epochs
    # on 10 validation films.
    return tiny_config(tiny_data, work, augment={"preset": "none"},
                       model={"backbone": "smallcnn", "weights": "none", "dropout": 0.0},
                       train={"monitor": "val_loss", "swa_epochs": N,
                              "stages": [{"unfreeze": "all", "epochs": EPOCHS, "lr": 1e-3}]})


@pytest.fixture(scope="module")
def swa_run(tiny_data, tmp_path_factory):
    """(config, snapshot of the run folder right after its last epoch, the resumed TrainResult)."""
    from medtl.train.trainer import train

    work = tmp_path_factory.mktemp("swa")
    cfg = _swa_config(tiny_data, work)
    with pytest.MonkeyPatch.context() as mp, crash_after_epoch(mp, EPOCHS):
        train(cfg, run_dir=work / "run", progress=False)
    snapshot = work / "snapshot"
    shutil.copytree(work / "run", snapshot)
    return cfg, snapshot, train(cfg, resume=work / "run", progress=False)


def _resume_copy(snapshot, dest, cfg, monkeypatch=None, scores=None):
    """Resume a copy of ``snapshot``; ``scores`` (best, average) replace the two evaluations."""
    from medtl.train import trainer

    shutil.copytree(snapshot, dest)
    if scores is not None:
        it = iter(scores)
        monkeypatch.setattr(trainer._Run, "_score", lambda self: next(it))
    return trainer.train(cfg, resume=dest, progress=False)


def _ckpt_arrays(snapshot, files) -> list[dict]:
    out = []
    for f in files:
        with np.load(snapshot / "ckpt" / f) as data:
            out.append({k: data[k] for k in data.files})
    return out


def _saved_weights(run_dir) -> list[np.ndarray]:
    from medtl.models.classifier import load_model

    return load_model(run_dir / "model.keras").get_weights()


def _best_checkpoint_weights(cfg, snapshot) -> list[np.ndarray]:
    from medtl.models import build_model
    from medtl.train.checkpoint import load_state, load_weights

    model = build_model(cfg, 1)
    load_weights(model, [snapshot / "ckpt" / f for f in load_state(snapshot / "ckpt").best_weights])
    return model.get_weights()


def _assert_saved_is_the_average(cfg, snapshot, run_dir, epochs) -> None:
    """model.keras: the mean of the window's epoch files (BatchNorm statistics re-estimated),
    the stage's start weights elsewhere."""
    from medtl.models import build_model
    from medtl.train.checkpoint import load_state

    state = load_state(snapshot / "ckpt")
    files = [w["file"] for w in state.swa_saved if w["epoch"] in epochs]
    assert len(files) == len(epochs)
    arrays = _ckpt_arrays(snapshot, files)
    (start,) = _ckpt_arrays(snapshot, [state.best_weights[0]])
    paths = [v.path for v in build_model(cfg, 1).weights]
    saved = _saved_weights(run_dir)
    n_avg = n_bn = 0
    for key in sorted(start, key=lambda k: int(k[1:])):
        i = int(key[1:])
        if key not in arrays[0]:
            np.testing.assert_array_equal(saved[i], start[key], err_msg=paths[i])  # not trained in the stage
        elif "moving_" in paths[i]:
            n_bn += 1  # re-estimated for the averaged weights: not the mean of the epochs' statistics
            assert np.all(np.isfinite(saved[i]))
        else:
            n_avg += 1
            np.testing.assert_allclose(saved[i], np.mean([a[key] for a in arrays], axis=0), rtol=1e-5, atol=1e-7,
                                       err_msg=paths[i])
    assert n_avg > 4 and n_bn > 4


def test_the_average_is_decided_by_the_validation_monitor(swa_run):
    cfg, snapshot, res = swa_run
    st = json.loads((snapshot / "ckpt" / "state.json").read_text())
    best = res.metrics["best"]
    assert best["stage"] == 1 and best["epoch"] >= 2, "the tiny run must peak after its first epoch"
    # Right after the last epoch: the epochs of the best's window are kept, nothing decided.
    assert st["swa"] is None and best["epoch"] in [w["epoch"] for w in st["swa_saved"]]
    for w in st["swa_saved"]:
        assert (snapshot / "ckpt" / w["file"]).is_file()

    swa = res.metrics["swa"]
    assert swa["epochs"] == list(range(best["epoch"] - N + 1, best["epoch"] + 1)) and swa["stage"] == 1
    assert swa["global_epochs"] == [e for e in swa["epochs"]]  # one stage: global = stage epochs
    # Both scored alike: the best epoch's score is the one logged for it at training time.
    assert swa["best_value"] == pytest.approx(best["value"], rel=1e-4)
    assert swa["kept"] == (swa["value"] <= swa["best_value"])  # val_loss: lower is better
    assert swa["batchnorm_recalibrated"] > 0 and swa["swa_epochs"] == N

    names = sorted(p.name for p in (res.run_dir / "ckpt").iterdir())
    if swa["kept"]:
        _assert_saved_is_the_average(cfg, snapshot, res.run_dir, swa["epochs"])
        assert "swa.weights.npz" in names
    else:
        for a, b in zip(_saved_weights(res.run_dir), _best_checkpoint_weights(cfg, snapshot)):
            np.testing.assert_array_equal(a, b)
        assert "swa.weights.npz" not in names
    # The epochs' own files are gone once the average is decided; the best checkpoint stays.
    assert not any(n.startswith("epoch-") for n in names)
    assert len([n for n in names if n.startswith("best-")]) == 1
    # Downstream uses the weights kept: the validation scores are the saved model's.
    for a, b in zip(_saved_weights(res.run_dir), res.model.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kept", [True, False])
def test_the_average_is_kept_only_when_it_scores_at_least_as_well(swa_run, tmp_path, monkeypatch, kept):
    cfg, snapshot, _ = swa_run
    # val_loss: (best, average); a tie keeps the average.
    scores = (0.5, 0.5) if kept else (0.4, 0.45)
    res = _resume_copy(snapshot, tmp_path / "run", cfg, monkeypatch, scores)
    swa = res.metrics["swa"]
    assert (swa["best_value"], swa["value"], swa["kept"]) == (scores[0], scores[1], kept)
    if kept:
        _assert_saved_is_the_average(cfg, snapshot, res.run_dir, swa["epochs"])
    else:
        for a, b in zip(_saved_weights(res.run_dir), _best_checkpoint_weights(cfg, snapshot)):
            np.testing.assert_array_equal(a, b)
    scored = res.model.predict(np.zeros((1, 32, 32, 1), np.float32), verbose=0)  # the model returned
    saved = _load(res.run_dir).predict(np.zeros((1, 32, 32, 1), np.float32), verbose=0)
    np.testing.assert_allclose(scored, saved, atol=1e-6)


def _load(run_dir):
    from medtl.models.classifier import load_model

    return load_model(run_dir / "model.keras")


def test_a_run_killed_after_the_decision_resumes_without_averaging_again(swa_run, tmp_path, monkeypatch):
    from medtl.train import trainer

    cfg, snapshot, ref = swa_run
    run = tmp_path / "run"
    shutil.copytree(snapshot, run)

    def crash(*args, **kwargs):
        raise Crash

    with monkeypatch.context() as mp:
        mp.setattr(trainer, "_save_model", crash)  # dies right after the decision is committed
        with pytest.raises(Crash):
            trainer.train(cfg, resume=run, progress=False)
    st = json.loads((run / "ckpt" / "state.json").read_text())
    assert not st["finished"] and st["swa"]["kept"] == ref.metrics["swa"]["kept"] and st["swa_saved"] == []
    assert not any(p.name.startswith("epoch-") for p in (run / "ckpt").iterdir())

    def no_second_average(self):
        raise AssertionError("the average was decided again")

    monkeypatch.setattr(trainer._Run, "_decide_average", no_second_average)
    res = trainer.train(cfg, resume=run, progress=False)
    assert res.metrics["swa"] == ref.metrics["swa"]
    for a, b in zip(_saved_weights(run), _saved_weights(ref.run_dir)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(res.val_predictions["score"], ref.val_predictions["score"], atol=1e-6)
    again = trainer.train(cfg, resume=run, progress=False)  # finished: re-read, nothing redone
    assert again.model is None and again.metrics == res.metrics


@pytest.mark.slow
def test_an_uninterrupted_run_ends_as_the_resumed_one(swa_run, tmp_path):
    from medtl.train.trainer import train

    cfg, _, ref = swa_run
    res = train(cfg, run_dir=tmp_path / "run", progress=False)
    assert res.metrics["swa"]["epochs"] == ref.metrics["swa"]["epochs"]
    assert res.metrics["swa"]["kept"] == ref.metrics["swa"]["kept"]
    assert res.metrics["swa"]["value"] == pytest.approx(ref.metrics["swa"]["value"], abs=1e-5)
    for a, b in zip(_saved_weights(res.run_dir), _saved_weights(ref.run_dir)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_a_head_only_last_stage_on_cached_features_is_averaged(tiny_data, tmp_path, capsys):
    """The head trains on cached backbone features; the average is of the head's weights and
    is scored on the images by the whole model (monitor: the training loss, which falls)."""
    from medtl.train.trainer import train

    cfg = tiny_config(tiny_data, tmp_path, augment={"preset": "none"},
                      train={"monitor": "loss", "swa_epochs": 2, "feature_cache": True,
                             "stages": [{"unfreeze": "head", "epochs": 3, "lr": 1e-2}]})
    res = train(cfg, run_dir=tmp_path / "run")
    out = capsys.readouterr().out
    assert "cached features" in out
    swa = res.metrics["swa"]
    best = res.metrics["best"]["epoch"]
    assert best >= 2, "the training loss should fall"
    assert swa["epochs"] == [best - 1, best] and swa["batchnorm_recalibrated"] == 0  # pretrained BN stays frozen
    assert swa["kept"] == (swa["value"] <= swa["best_value"])
    line = (f"SWA of epochs {best - 1}-{best} of stage 1: loss {swa['value']:.4f} vs best "
            f"{swa['best_value']:.4f}: {'kept' if swa['kept'] else 'not kept'}")
    assert line in out


@pytest.mark.slow  # the rule itself: test_the_window_ends_at_the_best_epoch_of_the_last_stage
def test_a_best_epoch_in_an_earlier_stage_is_not_averaged(tiny_data, tmp_path, capsys):
    """Stage 2 (SGD at lr 1e3) blows the head up and never improves on stage 1: nothing to
    average, the best checkpoint is kept and metrics.json says why."""
    from medtl.train.trainer import train

    cfg = tiny_config(tiny_data, tmp_path, augment={"preset": "none"},
                      train={"monitor": "val_loss", "swa_epochs": 2, "feature_cache": True, "patience": 1,
                             "stages": [{"unfreeze": "head", "epochs": 2, "lr": 1e-2},
                                        {"unfreeze": "head", "epochs": 2, "lr": 1e3, "optimizer": "sgd"}]})
    res = train(cfg, run_dir=tmp_path / "run")
    out = capsys.readouterr().out
    assert res.metrics["best"]["stage"] == 1
    swa = res.metrics["swa"]
    assert swa["kept"] is False and "the best epoch is in stage 1, not in the last stage (2)" in swa["skipped"]
    assert "No weight average (train.swa_epochs 2): the best epoch is in stage 1" in out
    assert not (res.run_dir / "ckpt" / "swa.weights.npz").exists()
