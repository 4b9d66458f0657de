"""Discriminative learning rates (train.block_lr_decay): per-block rates inside the optimizer."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.train.conftest import crash_after_epoch, tiny_config

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from medtl.config import ConfigError, StageConfig, config_from_dict  # noqa: E402
from medtl.models import build_model, set_trainable  # noqa: E402
from medtl.train.block_lr import (  # noqa: E402
    BlockLRMixin,
    block_lr_class,
    block_lr_groups,
    block_lr_multipliers,
    describe_block_lr,
)
from medtl.train.checkpoint import load_optimizer, save_optimizer  # noqa: E402
from medtl.train.trainer import _make_optimizer  # noqa: E402

LR = 1e-3
# smallcnn's blocks, top first, and their multipliers at d = 0.5
SMALLCNN = {"cnn_block4": 0.5, "cnn_block3": 0.25, "cnn_block2": 0.125, "cnn_block1": 0.0625}


def _config(backbone: str = "smallcnn", size: int = 16, **train):
    return config_from_dict({
        "data": {"manifest": "unused.csv", "image_size": [size, size]},
        "model": {"backbone": backbone, "weights": "none", "dropout": 0.0},
        "train": train,
    })


def _model(unfreeze, backbone: str = "smallcnn", size: int = 16):
    keras.utils.set_random_seed(0)
    model = build_model(_config(backbone, size), 1)
    set_trainable(model, unfreeze)
    return model


def _batch(size: int = 16):
    rng = np.random.default_rng(0)
    return rng.random((4, size, size, 1)).astype("float32"), np.array([[0], [1], [0], [1]], "float32")


def _gradients(model):
    x, y = _batch()
    with tf.GradientTape() as tape:
        loss = keras.ops.mean(keras.losses.binary_crossentropy(y, model(x, training=True)))
    variables = model.trainable_variables
    return tape.gradient(loss, variables), variables


def _multiplier_by_name(path: str) -> float:
    block = next((b for b in SMALLCNN if path.startswith(b + "_")), None)
    return SMALLCNN[block] if block else 1.0  # the head


def _apply(opt, grads, variables) -> list[np.ndarray]:
    before = [v.numpy().copy() for v in variables]
    opt.apply(grads, variables)
    return [v.numpy() - b for v, b in zip(variables, before)]


def test_adam_first_step_moves_each_block_at_its_rate():
    model = _model("all")
    grads, variables = _gradients(model)
    mults = block_lr_multipliers(model, "all", 0.5)
    opt = _make_optimizer(StageConfig(unfreeze="all", lr=LR, optimizer="adam"), 1, mults)
    deltas = _apply(opt, grads, variables)
    seen = set()
    for v, g, d in zip(variables, grads, deltas):
        m = _multiplier_by_name(v.path)
        seen.add(m)
        g = g.numpy()
        # Adam's first step, exactly: lr * g / (|g| + eps / sqrt(1 - beta_2)), about lr * sign(g).
        expected = -LR * m * g / (np.abs(g) + 1e-7 / math.sqrt(1 - 0.999))
        # atol: float32 rounding of w - delta (|w| < 1), far below the smallest rate, lr / 16
        np.testing.assert_allclose(d, expected, rtol=2e-3, atol=5e-8, err_msg=v.path)
        assert np.abs(d).max() == pytest.approx(LR * m, rel=1e-3), v.path
    assert seen == {1.0, *SMALLCNN.values()}


def test_head_and_frozen_blocks_with_unfreeze_n():
    model = _model(2)
    mults = block_lr_multipliers(model, 2, 0.5)
    trainable = {id(v): v.path for v in model.trainable_variables}
    # Every trainable backbone variable has its block's rate; the head is unlisted (rate 1).
    assert {trainable[i].split("_conv")[0].split("_bn")[0] for i in mults if i in trainable} == \
        {"cnn_block4", "cnn_block3"}
    assert all(mults[i] == _multiplier_by_name(p) for i, p in trainable.items() if i in mults)
    assert not any(p.startswith("classifier") for i, p in trainable.items() if i in mults)
    assert describe_block_lr(model, 2, LR, 0.5) == "block lr: head 0.001, cnn_block4 0.0005, cnn_block3 0.00025"


def test_sgd_weight_decay_is_scaled_too_and_head_matches_plain_keras():
    model = _model("all")
    grads, variables = _gradients(model)
    mults = block_lr_multipliers(model, "all", 0.5)
    before = [v.numpy().copy() for v in variables]
    opt = block_lr_class(keras.optimizers.SGD)(LR, weight_decay=0.1, lr_multipliers=mults)
    deltas = _apply(opt, grads, variables)
    for v, g, b, d in zip(variables, grads, before, deltas):
        m = _multiplier_by_name(v.path)
        expected = b * (1 - 0.1 * LR * m) - LR * m * g.numpy() - b  # decoupled decay, then the step
        np.testing.assert_allclose(d, expected, rtol=1e-3, atol=5e-8, err_msg=v.path)
    # The head (multiplier 1) moves bit for bit as under the plain optimizer.
    for v, b in zip(variables, before):
        v.assign(b)
    plain = _apply(keras.optimizers.SGD(LR, weight_decay=0.1), grads, variables)
    for v, d, p in zip(variables, deltas, plain):
        if v.path.startswith("classifier"):
            np.testing.assert_array_equal(d, p)


@pytest.mark.parametrize("name,cls", [("adam", "Adam"), ("adamw", "AdamW"), ("sgd", "SGD"), ("rmsprop", "RMSprop")])
def test_no_decay_builds_the_plain_optimizer(name, cls):
    model = _model(2)
    for unfreeze, d in ((2, 1.0), ("all", 1.0), ("head", 0.5)):
        set_trainable(model, unfreeze)
        mults = block_lr_multipliers(model, unfreeze, d)
        assert mults == {}
        opt = _make_optimizer(StageConfig(unfreeze=unfreeze, optimizer=name, schedule="cosine"), 3, mults)
        assert type(opt) is getattr(keras.optimizers, cls)
        assert describe_block_lr(model, unfreeze, LR, d) is None
    set_trainable(model, 2)
    opt = _make_optimizer(StageConfig(unfreeze=2, optimizer=name), 3, block_lr_multipliers(model, 2, 0.5))
    assert isinstance(opt, getattr(keras.optimizers, cls)) and isinstance(opt, BlockLRMixin)


@pytest.mark.parametrize("value", [0, -1, 1.5, float("nan")])
def test_config_refuses_bad_decay(value):
    with pytest.raises(ConfigError) as err:
        _config(block_lr_decay=value)
    msg = str(err.value)
    assert msg.startswith("train.block_lr_decay: invalid value") and str(value) in msg
    assert "0 < x <= 1" in msg and "0.5" in msg and "\n" not in msg


def test_config_accepts_decay_and_defaults_to_off():
    assert _config().train.block_lr_decay == 1.0
    assert _config(block_lr_decay=0.5).train.block_lr_decay == 0.5
    assert _config(block_lr_decay=1).train.block_lr_decay == 1.0


def test_stem_and_bottom_block_of_mobilenetv2():
    model = _model("all", backbone="mobilenetv2", size=32)
    groups = block_lr_groups(model, 0.5)
    names = [n for n, _, _ in groups]
    assert names[:2] == ["block_16", "block_15"] and names[-2:] == ["expanded_conv", "stem"]
    by_name = {n: (m, vs) for n, m, vs in groups}
    assert by_name["block_16"][0] == 0.5 and by_name["expanded_conv"][0] == 0.5 ** 17
    assert by_name["stem"][0] == by_name["expanded_conv"][0]  # the stem trains at the bottom block's rate
    assert {v.path.split("/")[0] for v in by_name["stem"][1]} == {"Conv1", "bn_Conv1"}
    # The top block's extra layers (Conv_1, out_relu) are block_16's.
    assert any(v.path.startswith("Conv_1/") for v in by_name["block_16"][1])
    backbone = model.get_layer("backbone")
    assert sum(len(vs) for _, _, vs in groups) == len(backbone.weights)
    assert describe_block_lr(model, "all", 1e-4, 0.5).endswith(f"expanded_conv {1e-4 * 0.5 ** 17:.3g}, "
                                                               f"stem {1e-4 * 0.5 ** 17:.3g}")


def test_backbone_without_blocks_gets_the_decay_once(monkeypatch):
    from medtl.train import block_lr

    model = _model("all")
    monkeypatch.setattr(block_lr, "_spec_or_none", lambda m: None)  # as for a TF Hub backbone
    groups = block_lr_groups(model, 0.5)
    assert [(n, m) for n, m, _ in groups] == [("backbone", 0.5)]
    assert describe_block_lr(model, "all", LR, 0.5) == "block lr: head 0.001, backbone 0.0005"


def test_loss_scale_optimizer_keeps_the_rates():
    model = _model("all")
    grads, variables = _gradients(model)
    before = [v.numpy().copy() for v in variables]
    mults = block_lr_multipliers(model, "all", 0.5)
    plain = _apply(_make_optimizer(StageConfig(unfreeze="all", lr=LR), 1, mults), grads, variables)
    for v, b in zip(variables, before):
        v.assign(b)
    inner = _make_optimizer(StageConfig(unfreeze="all", lr=LR), 1, mults)
    wrapped = keras.optimizers.LossScaleOptimizer(inner, initial_scale=1.0)
    deltas = _apply(wrapped, grads, variables)
    for d, p in zip(deltas, plain):
        np.testing.assert_allclose(d, p, rtol=1e-6, atol=1e-12)
    plain_wrapped = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(LR))
    plain_wrapped.build(variables)
    assert [v.shape for v in wrapped.variables] == [v.shape for v in plain_wrapped.variables]


def _compiled(unfreeze, decay, **stage):
    model = _model(unfreeze)
    st = StageConfig(unfreeze=unfreeze, lr=LR, **stage)
    model.compile(optimizer=_make_optimizer(st, 2, block_lr_multipliers(model, unfreeze, decay)),
                  loss="binary_crossentropy")
    return model


def test_optimizer_state_saved_and_restored_for_resume(tmp_path):
    x, y = _batch()
    model = _compiled(2, 0.5, schedule="cosine")
    model.fit(x, y, batch_size=2, epochs=1, verbose=0, shuffle=False)
    save_optimizer(model, tmp_path / "opt.npz")
    saved = [v.numpy().copy() for v in model.optimizer.variables]
    # The same variables, slot for slot, as the plain optimizer keeps.
    plain = _compiled(2, 1.0, schedule="cosine")
    plain.optimizer.build(plain.trainable_variables)
    def names(opt):  # paths less the optimizer's own numbered name (adam_3/...)
        return [v.path.split("/", 1)[1] for v in opt.variables]

    assert names(model.optimizer) == names(plain.optimizer)
    assert model.optimizer.name.startswith("adam")

    resumed = _compiled(2, 0.5, schedule="cosine")
    resumed.set_weights(model.get_weights())
    load_optimizer(resumed, tmp_path / "opt.npz")
    for v, s in zip(resumed.optimizer.variables, saved):
        np.testing.assert_array_equal(v.numpy(), s)
    # The resumed optimizer continues exactly as the original would.
    model.fit(x, y, batch_size=2, epochs=1, verbose=0, shuffle=False)
    resumed.fit(x, y, batch_size=2, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(model.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.slow  # about 5 s alone, over 20 s on a loaded machine (XLA compiles the step)
def test_mirrored_mixed_precision_xla_step():
    from medtl.train.runtime import make_strategy

    x, y = _batch()
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        with make_strategy("mirrored").scope():
            model = _model("all")
            mults = block_lr_multipliers(model, "all", 0.5)
            model.compile(optimizer=_make_optimizer(StageConfig(unfreeze="all", lr=LR), 1, mults),
                          loss="binary_crossentropy", jit_compile=True)
            before = [v.numpy().copy() for v in model.trainable_variables]
            model.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False)
    finally:
        keras.config.set_dtype_policy(previous)
    assert type(model.optimizer).__name__ == "LossScaleOptimizer"
    for v, b in zip(model.trainable_variables, before):
        # Adam's first step moves every element by about lr * m (float16 gradients: loose).
        moved = np.abs(v.numpy() - b).max()
        assert moved == pytest.approx(LR * _multiplier_by_name(v.path), rel=1e-2), v.path


def test_short_training_with_decay_and_cosine(tiny_data, tiny_work, tmp_path, capsys):
    from medtl.train.trainer import train

    cfg = tiny_config(tiny_data, tiny_work, train={
        "stages": [{"unfreeze": 2, "epochs": 1, "lr": 1e-3, "schedule": "cosine"}], "block_lr_decay": 0.5})
    res = train(cfg, run_dir=tmp_path / "run", progress=True)
    out = capsys.readouterr().out
    assert "block lr: head 0.001, block_16 0.0005, block_15 0.00025" in out
    assert res.metrics["epochs_run"] == 1 and (res.run_dir / "model.keras").is_file()
    assert np.isfinite(res.history["loss"]).all()


@pytest.mark.slow  # two short runs
def test_resume_mid_stage_with_decay_ends_with_the_same_weights(tiny_data, tiny_work, tmp_path, monkeypatch):
    from medtl.models.classifier import load_model
    from medtl.train.trainer import train

    cfg = tiny_config(tiny_data, tiny_work, train={
        "stages": [{"unfreeze": 2, "epochs": 2, "lr": 1e-3, "schedule": "cosine"}], "block_lr_decay": 0.5})
    whole = train(cfg, run_dir=tmp_path / "whole", progress=False)
    with crash_after_epoch(monkeypatch, 1):
        train(cfg, run_dir=tmp_path / "resumed", progress=False)
    resumed = train(cfg, resume=tmp_path / "resumed", progress=False)
    for a, b in zip(load_model(whole.model_path).get_weights(), load_model(resumed.model_path).get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
