"""ckpt/ files and the state they name, on a tiny model and without training."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from medtl.train.checkpoint import Checkpointer, load_state, load_weights, save_state, save_weights
from medtl.train.state import RunState


def _model():
    import keras

    inp = keras.Input((3,))
    hidden = keras.layers.Dense(4, name="frozen")(inp)
    model = keras.Model(inp, keras.layers.Dense(1, name="head")(hidden))
    model.get_layer("frozen").trainable = False
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    return model


def _bump(model, by: float) -> None:
    """Change the trainable weights as an epoch would."""
    for v in model.trainable_weights:
        v.assign(v.numpy() + by)


def _snapshot(model) -> list[np.ndarray]:
    return [w.copy() for w in model.get_weights()]


def test_state_round_trips_with_a_nan_score(tmp_path):
    state = RunState(stage=1, epoch=2, global_epoch=5, wait=1, best=[0.8, math.nan],
                     best_at={"stage": 1, "epoch": 1, "global_epoch": 4}, weights=["a.npz", "b.npz"],
                     history=[{"stage": 1, "epoch": 1, "loss": 0.5}], fixed_epochs=None)
    save_state(tmp_path, state)
    json.loads((tmp_path / "state.json").read_text())  # strict JSON: NaN is stored as null
    back = load_state(tmp_path)
    assert back.best[0] == 0.8 and math.isnan(back.best[1])
    back.best = state.best = [0.8, 0.0]
    assert back == state
    assert load_state(tmp_path / "none") == RunState()


def test_an_unreadable_state_names_the_file(tmp_path):
    (tmp_path / "state.json").write_text('{"stage": 1, "nonsense": 2}')
    with pytest.raises(RuntimeError, match=r"state.json: unreadable checkpoint state"):
        load_state(tmp_path)


def test_partial_weight_files_apply_over_a_snapshot(tmp_path):
    model = _model()
    save_weights(model, tmp_path / "base.npz")
    start = _snapshot(model)
    _bump(model, 1.0)
    save_weights(model, tmp_path / "head.npz", which=[2, 3])  # the head's kernel and bias only
    after = _snapshot(model)
    other = _model()
    load_weights(other, [tmp_path / "base.npz", tmp_path / "head.npz"])
    for a, b in zip(other.get_weights(), after):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(other.get_weights()[0], start[0])
    with pytest.raises(RuntimeError, match="does not fit the model"):
        import keras

        load_weights(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]), [tmp_path / "base.npz"])


def test_epochs_of_a_stage_keep_the_best_weights_and_resume_from_the_last(tmp_path):
    model = _model()
    ck = Checkpointer(tmp_path / "ckpt")
    ck.on_run_start()
    state = RunState()
    ck.on_stage_start(state, 0, model)
    assert state.stage_base == "stage1-start.weights.npz"
    model.optimizer.build(model.trainable_variables)

    def epoch(e: int, improved: bool, end: bool) -> None:
        _bump(model, 1.0)
        ck.on_epoch_end(state, 0, e, model, model, end_of_stage=end, improved=improved)
        state.global_epoch += 1
        ck.save_state(state)
        ck.prune(state)

    epoch(0, improved=True, end=False)
    best = _snapshot(model)
    assert state.weights == state.best_weights == ["stage1-start.weights.npz", "best-0000.weights.npz"]
    epoch(1, improved=False, end=False)
    last = _snapshot(model)
    assert (state.stage, state.epoch, state.optimizer) == (0, 2, "epoch-0001.optimizer.npz")
    assert sorted(p.name for p in ck.dir.iterdir()) == [
        "best-0000.weights.npz", "epoch-0001.optimizer.npz", "epoch-0001.weights.npz",
        "stage1-start.weights.npz", "state.json"]

    # What a resumed run sees: the last epoch's weights, the best ones kept apart.
    resumed = _model()
    Checkpointer(ck.dir).restore(resumed, load_state(ck.dir).weights)
    for a, b in zip(resumed.get_weights(), last):
        np.testing.assert_array_equal(a, b)

    epoch(2, improved=False, end=True)  # the stage ends without improving: back to the best
    for a, b in zip(model.get_weights(), best):
        np.testing.assert_array_equal(a, b)
    assert (state.stage, state.epoch, state.optimizer) == (1, 0, None)
    assert sorted(p.name for p in ck.dir.iterdir()) == [
        "best-0000.weights.npz", "stage1-start.weights.npz", "state.json"]


def test_a_fixed_run_keeps_the_last_weights_and_the_optimizer_state(tmp_path):
    model = _model()
    ck = Checkpointer(tmp_path)
    state = RunState()
    ck.on_stage_start(state, 0, model)
    model.optimizer.build(model.trainable_variables)
    for v in model.optimizer.variables:
        v.assign(np.full(v.shape, 0.25, dtype=v.dtype))
    _bump(model, 1.0)
    ck.on_epoch_end(state, 0, 0, model, model, end_of_stage=False, improved=None)
    assert state.best_weights == [] and state.weights[-1] == "epoch-0000.weights.npz"

    other = _model()
    ck.restore(other, state.weights)
    ck.restore_optimizer(other, state)
    for a, b in zip(other.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(other.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
