"""Discriminative (layer-wise) learning rates: lower backbone blocks train more slowly.

With ``train.block_lr_decay`` d < 1, a stage that trains backbone blocks (``unfreeze: N`` or
``all``) gives each trainable variable a learning-rate multiplier:

* the head (every layer outside the backbone): 1, the stage's learning rate (schedule included);
* the backbone's top block: d, the next block down: d**2, and so on (blocks as in
  :mod:`medtl.models.backbones`, top first);
* backbone layers in no named block take the multiplier of the nearest block above them (the
  lowest block below which they sit): the stem, below the bottom block, trains at the bottom
  block's rate, and a layer between two blocks at the upper one's;
* a backbone without blocks (a TF Hub model, which only trains with ``unfreeze: all``): the
  whole backbone at d, once.

Head-only stages, and d = 1, use the plain Keras optimizer, untouched.

Keras 3 has no per-variable learning rate, and scaling gradients would do nothing under Adam or
RMSprop (their steps do not depend on the gradient's scale), so :func:`block_lr_class` makes a
subclass of the stage's optimizer whose ``update_step`` multiplies the learning rate by the
variable's multiplier. It adds no optimizer variables, so optimizer checkpoints are the same set
as without the decay, and it works under a ``LossScaleOptimizer`` (mixed precision, which wraps
it), ``tf.distribute`` (``update_step`` already runs per variable, per replica) and XLA (the
multipliers are Python floats fixed when the step is traced). Under mixed precision Keras
wraps the stage's optimizer in a ``LossScaleOptimizer`` at compile time; that wrapper unscales
the gradients and calls this optimizer's ``apply``, so the rates hold, and the variables it
updates are float32 as always.

Decoupled weight decay (Keras applies ``w -= w * weight_decay * lr`` before the step, for all
four optimizers medtl uses) is scaled by the same multiplier: a block that moves at ``lr * m``
also decays at ``lr * m * weight_decay``, as in layer-wise decay for AdamW (BEiT, ELECTRA). The
subclass applies it in ``update_step``, just before the variable's own step, rather than in
Keras's ``_apply_weight_decay``; each variable's decay involves only itself, so the result is
the same as Keras's order.

Example:
    >>> mults = block_lr_multipliers(model, 2, 0.5)      # after set_trainable(model, 2)
    >>> opt = block_lr_class(keras.optimizers.Adam)(1e-4, lr_multipliers=mults)
    >>> describe_block_lr(model, 2, 1e-4, 0.5)
    'block lr: head 0.0001, block_16 5e-05, block_15 2.5e-05'
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from medtl.train.stages import Unfreeze, _backbone, _check_unfreeze, _spec_or_none

__all__ = ["block_lr_groups", "block_lr_multipliers", "block_lr_class", "describe_block_lr", "BlockLRMixin"]


def block_lr_groups(model: keras.Model, decay: float) -> list[tuple[str, float, list[keras.Variable]]]:
    """The backbone's variables grouped by learning-rate multiplier, top block first.

    Args:
        model: a model from :func:`medtl.models.build_model`.
        decay: ``train.block_lr_decay``, 0 < d <= 1.

    Returns:
        ``[(name, multiplier, variables), ...]``: one group per block (``decay ** k`` for the
        k-th block from the top), then ``"stem"`` for the layers below the bottom block (the
        bottom block's multiplier); a backbone without blocks is one group ``"backbone"`` at
        ``decay``. Head variables are in no group (multiplier 1). Every variable of the
        backbone is listed, trainable in this stage or not.

    Example:
        >>> [(n, m) for n, m, _ in block_lr_groups(model, 0.5)][:2]     # smallcnn
        [('cnn_block4', 0.5), ('cnn_block3', 0.25)]
    """
    backbone = _backbone(model)
    spec = _spec_or_none(model)
    if spec is None or not spec.blocks:
        return [("backbone", float(decay), list(backbone.weights))]
    mult = {block.name: float(decay) ** (k + 1) for k, block in enumerate(spec.blocks)}
    layers = backbone.layers  # topological order, input first
    block_of = [next((b.name for b in spec.blocks if b.contains(layer.name)), None) for layer in layers]
    first = next((i for i, b in enumerate(block_of) if b is not None), len(layers))
    variables: dict[str, list] = {block.name: [] for block in spec.blocks}
    variables["stem"] = []
    # Walk down from the output: a layer in no block joins the nearest block above it (the top
    # block when none is above); the layers before every block layer are the stem, named apart
    # in the log but at the rate of the block above them, the bottom one.
    above = spec.blocks[0].name
    for i in range(len(layers) - 1, -1, -1):
        above = block_of[i] or above
        name = "stem" if i < first else above
        variables[name].extend(layers[i].weights)
    mult["stem"] = mult[above]
    return [(name, mult[name], _unique(vs)) for name, vs in variables.items() if vs]


def _unique(variables: list) -> list:
    seen, out = set(), []
    for v in variables:
        if id(v) not in seen:
            seen.add(id(v))
            out.append(v)
    return out


def block_lr_multipliers(model: keras.Model, unfreeze: Unfreeze, decay: float) -> dict[int, float]:
    """Learning-rate multipliers of the backbone's variables for a stage, by ``id(variable)``.

    Args:
        model: a model from :func:`medtl.models.build_model`.
        unfreeze: the stage's ``unfreeze``.
        decay: ``train.block_lr_decay``.

    Returns:
        ``{id(variable): multiplier}`` for backbone variables; variables not listed (the head)
        train at the stage's rate. Empty for a head-only stage or ``decay`` 1 (no decay at all).

    Example:
        >>> mults = block_lr_multipliers(model, "all", 0.5)
    """
    if _check_unfreeze(unfreeze) == "head" or float(decay) == 1.0:
        return {}
    return {id(v): m for _, m, vs in block_lr_groups(model, decay) for v in vs}


def describe_block_lr(model: keras.Model, unfreeze: Unfreeze, lr: float, decay: float) -> str | None:
    """One log line with the learning rate of the head and of each block that trains.

    Call after :func:`medtl.train.stages.set_trainable`. Rates are the stage's starting ones
    (a cosine schedule scales them all alike).

    Returns:
        e.g. ``"block lr: head 0.0001, block_16 5e-05, block_15 2.5e-05"``; None when there is
        no decay in this stage (head only, or ``decay`` 1).
    """
    if not block_lr_multipliers(model, unfreeze, decay):
        return None
    trainable = {id(v) for v in model.trainable_weights}
    parts = [f"head {lr:.3g}"]
    for name, m, vs in block_lr_groups(model, decay):
        if any(id(v) in trainable for v in vs):
            parts.append(f"{name} {lr * m:.3g}")
    return "block lr: " + ", ".join(parts)


class BlockLRMixin:
    """Scales an optimizer's learning rate, and its decoupled weight decay, per variable.

    Mixed in before a Keras optimizer class by :func:`block_lr_class`; takes one extra keyword,
    ``lr_multipliers`` (``{id(variable): multiplier}`` over the variables the optimizer will be
    built on; unlisted variables get 1). It adds no optimizer variables, and its config is the
    base optimizer's, so one rebuilt from a saved config trains like the plain optimizer.
    """

    def __init__(self, *args: Any, lr_multipliers: dict[int, float] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A tuple of pairs: the optimizer's attribute tracker would wrap a dict (harmless, but
        # nothing to track here).
        self._lr_multiplier_items = tuple((lr_multipliers or {}).items())
        self._lr_multiplier_by_index: tuple[float, ...] = ()

    def build(self, variables: list) -> None:
        super().build(variables)
        by_id = dict(self._lr_multiplier_items)
        # By position in the optimizer's own variable list: update_step sees the backend's
        # variable (a tf.Variable, per replica under tf.distribute), which Keras maps back with
        # _get_variable_index, as Adam does to find its slots.
        self._lr_multiplier_by_index = tuple(float(by_id.get(id(v), 1.0)) for v in self._trainable_variables)

    def lr_multiplier(self, variable) -> float:
        """The learning-rate multiplier of a variable the optimizer was built on."""
        return self._lr_multiplier_by_index[self._get_variable_index(variable)]

    def _apply_weight_decay(self, variables) -> None:
        # Applied per variable in update_step, with the variable's multiplier.
        return

    def update_step(self, gradient, variable, learning_rate) -> None:
        m = self.lr_multiplier(variable)
        if m != 1.0:
            learning_rate = ops.multiply(ops.cast(learning_rate, "float32"), m)
        if self.weight_decay is not None and self._use_weight_decay(variable):
            # Keras's own decoupled decay (w -= w * wd * lr), with this variable's rate.
            lr = ops.cast(learning_rate, variable.dtype)
            wd = ops.cast(self.weight_decay, variable.dtype)
            self.assign_sub(variable, ops.multiply(ops.multiply(variable, wd), lr))
        super().update_step(gradient, variable, learning_rate)


_CLASSES: dict[type, type] = {}


def block_lr_class(base: type) -> type:
    """A subclass of the Keras optimizer class ``base`` with :class:`BlockLRMixin`'s per-variable
    learning rates (one class per base, made once).

    Example:
        >>> opt = block_lr_class(keras.optimizers.SGD)(0.1, lr_multipliers={id(v): 0.5})
    """
    if base not in _CLASSES:
        # __name__ stays the base's: Keras names an optimizer (and the paths of its variables)
        # after its class, so these read as the plain optimizer's ("adam/iteration" ...).
        cls = type(base.__name__, (BlockLRMixin, base),
                   {"__module__": __name__, "__qualname__": f"BlockLR{base.__name__}"})
        # Registered ("medtl>Adam" ...) so a model saved while compiled with it loads with
        # compile=True once this module is imported (medtl itself loads with compile=False).
        # Rebuilt from its config it has no multipliers: it trains like ``base``.
        _CLASSES[base] = keras.saving.register_keras_serializable(package="medtl")(cls)
    return _CLASSES[base]


# The classes medtl's stages use exist (and are registered) as soon as this module is imported.
for _base in (keras.optimizers.Adam, keras.optimizers.AdamW, keras.optimizers.SGD, keras.optimizers.RMSprop):
    block_lr_class(_base)
del _base
