"""Losses and class weights for small, imbalanced datasets.

Class weights are applied inside the loss rather than through Keras' ``class_weight``, which
only handles one label per sample: here they also work per label for multilabel tasks.

Weights layout (what :func:`compute_class_weights` returns and :func:`make_loss` takes):

* binary and multilabel: shape ``(2, K)``; row 0 weighs samples whose label k is 0, row 1
  those whose label k is 1 (K = 1 for binary);
* multiclass: shape ``(K,)``, the weight of a sample of class k.

Losses average ``weight * loss`` over the labels of a sample and then over the batch (Keras'
``sum_over_batch_size``), so "balanced" weights, whose mean over the training samples is 1,
keep the loss on the same scale as the unweighted one.

Soft targets (``augment.mixup`` / ``augment.cutmix`` mix two samples' targets by ``lam``) are
read as that mixture of samples: the loss is ``lam`` times the first sample's class-weighted
loss plus ``1 - lam`` times the second's. Per label (binary, multilabel), with target ``y``:
``y * w_pos * ce(p, 1) + (1 - y) * w_neg * ce(p, 0)``; per sample (multiclass), with target row
``y``: ``sum_c y_c * w_c * ce(p, one-hot c)``. For 0/1 targets this is the usual weighted loss.

Example:
    >>> w = compute_class_weights(y_train, "balanced", ["NORMAL", "PNEUMONIA"])
    >>> loss = make_loss(cfg.train.loss, "binary", w)
    >>> model.compile(optimizer="adam", loss=loss)
"""

from __future__ import annotations

from typing import Mapping, Sequence

import keras
import numpy as np
from keras import ops

__all__ = ["BinaryLoss", "CategoricalLoss", "make_loss", "compute_class_weights", "infer_task"]

TASKS = ("binary", "multiclass", "multilabel")


def infer_task(targets: np.ndarray) -> str:
    """Guess the task from a target matrix: K=1 binary, one-hot rows multiclass, else multilabel.

    A multilabel set where every sample has exactly one label looks multiclass; pass the task
    explicitly where it is known.
    """
    t = np.asarray(targets)
    if t.ndim != 2:
        raise ValueError(f"targets: expected shape (N, K), got {t.shape}")
    if t.shape[1] == 1:
        return "binary"
    return "multiclass" if np.all(t.sum(axis=1) == 1) else "multilabel"


def compute_class_weights(
    targets: np.ndarray,
    mode: str | Mapping[str | int, float] | None,
    classes: Sequence[str],
    task: str | None = None,
) -> np.ndarray | None:
    """Class weights from the training split (``balanced``), none, or an explicit mapping.

    ``balanced`` follows scikit-learn: a class seen ``count`` times among ``n`` samples and
    ``k`` classes weighs ``n / (k * count)``. Binary and multilabel use two classes per label
    (absent, present), giving per-label negative and positive weights.

    An explicit mapping names classes (or their 0-based index) with their weight; unnamed ones
    weigh 1. Binary: the two class names; the second is the positive one. Multilabel: a label
    name weighs that label's positive samples (negatives weigh 1).

    Args:
        targets: ``(N, K)`` float targets of the TRAINING split (K = 1 for binary).
        mode: ``"balanced"``, ``"none"``/None or a mapping ``{class: weight}``.
        classes: the class names (binary: two; multiclass/multilabel: K).
        task: ``binary``, ``multiclass`` or ``multilabel``; inferred from ``targets`` when None
            (see :func:`infer_task`).

    Returns:
        ``(2, K)`` for binary/multilabel, ``(K,)`` for multiclass, float32; None for ``none``.

    Raises:
        ValueError: unknown class names, weights <= 0, or ``balanced`` with a class absent
            from the training split.

    Example:
        >>> compute_class_weights(np.array([[0], [0], [0], [1]]), "balanced", ["neg", "pos"])
        array([[0.6666667],
               [2.       ]], dtype=float32)
    """
    if mode is None or (isinstance(mode, str) and mode.lower() == "none"):
        return None
    t = np.asarray(targets, dtype=np.float64)
    task = task or infer_task(t)
    if task not in TASKS:
        raise ValueError(f"task: invalid value {task!r}; expected one of {', '.join(TASKS)}")
    classes = [str(c) for c in classes]
    n, k = t.shape
    if task == "binary" and (k != 1 or len(classes) != 2):
        raise ValueError(f"class weights: binary needs targets (N, 1) and two classes; got {t.shape} and {classes}")
    if task != "binary" and len(classes) != k:
        raise ValueError(f"class weights: targets have {k} columns but {len(classes)} classes were given ({classes})")

    if isinstance(mode, str):
        if mode.lower() != "balanced":
            raise ValueError(
                f"train.loss.class_weight: invalid value {mode!r}; expected balanced, none or a mapping {{class: weight}}"
            )
        return _balanced(t, task, classes)
    if isinstance(mode, Mapping):
        return _from_mapping(mode, task, classes, k)
    raise ValueError(f"train.loss.class_weight: invalid value {mode!r}; expected balanced, none or a mapping")


def _balanced(t: np.ndarray, task: str, classes: list[str]) -> np.ndarray:
    n, k = t.shape
    if task == "multiclass":
        counts = t.sum(axis=0)
        names, two = classes, False
    else:
        pos = t.sum(axis=0)
        counts = np.stack([n - pos, pos])
        names = classes if task == "binary" else [f"{c} (present)" for c in classes]
        two = True
    if np.any(counts == 0):
        if task == "binary":
            empty = [classes[i] for i in np.flatnonzero(counts[:, 0] == 0)]
        elif task == "multilabel":
            empty = [f"{classes[j]} ({'absent' if i == 0 else 'present'})" for i, j in zip(*np.nonzero(counts == 0))]
        else:
            empty = [names[i] for i in np.flatnonzero(counts == 0)]
        raise ValueError(
            f"train.loss.class_weight: balanced, but the training split has no samples of {', '.join(empty)}; "
            "use class_weight: none or an explicit mapping"
        )
    weights = n / ((2 if two else len(classes)) * counts)
    return weights.astype(np.float32)


def _from_mapping(mode: Mapping, task: str, classes: list[str], k: int) -> np.ndarray:
    weights = np.ones((2, k) if task != "multiclass" else (k,), dtype=np.float32)
    for key, value in mode.items():
        idx = _class_index(key, classes)
        try:
            w = float(value)
        except (TypeError, ValueError):
            w = -1.0
        if not w > 0:
            raise ValueError(f"train.loss.class_weight.{key}: invalid value {value!r}; expected a number > 0")
        if task == "binary":
            weights[idx, 0] = w
        elif task == "multilabel":
            weights[1, idx] = w
        else:
            weights[idx] = w
    return weights


def _class_index(key: str | int, classes: list[str]) -> int:
    if str(key) in classes:
        return classes.index(str(key))
    text = str(key).strip()
    if text.isdigit() and int(text) < len(classes):
        return int(text)
    raise ValueError(
        f"train.loss.class_weight: unknown class {key!r}; classes are {', '.join(classes)} (or their index 0..{len(classes) - 1})"
    )


def _clip(y_pred):
    eps = keras.config.epsilon()
    return ops.clip(ops.cast(y_pred, "float32"), eps, 1.0 - eps)


@keras.saving.register_keras_serializable(package="medtl")
class BinaryLoss(keras.losses.Loss):
    """Per-label sigmoid cross-entropy or focal loss with per-label class weights.

    For each label: ``w * f * ce`` with ``ce`` the binary cross-entropy against the smoothed
    target ``y(1 - s) + s/2``, ``w`` the negative or positive weight of that label, and, for
    ``kind="focal"``, ``f = a_t (1 - p_t)^gamma`` (``p_t`` the probability given to the smoothed
    target, ``a_t`` = alpha for positives and 1 - alpha for negatives, or 1 when alpha is None).
    A soft target ``y`` in (0, 1) (mixup, cutmix) gives ``y * L(1) + (1 - y) * L(0)``, with
    ``L(t)`` that loss for the 0/1 target ``t``, its weight included. A sample's loss is the mean
    over its labels.

    Args:
        kind: ``"bce"`` or ``"focal"``.
        weights: ``(2, K)`` negative/positive weights per label, or None.
        gamma: focusing parameter (focal only).
        alpha: positive-class balance in (0, 1) (focal only), or None.
        label_smoothing: ``s`` in ``[0, 0.5)``.

    Example:
        >>> loss = BinaryLoss("bce", weights=[[0.6], [2.0]])
        >>> float(loss(np.array([[1.0]]), np.array([[0.9]])))   # 2.0 * -log(0.9)
        0.2107...
    """

    def __init__(
        self,
        kind: str = "bce",
        weights: Sequence[Sequence[float]] | np.ndarray | None = None,
        gamma: float = 2.0,
        alpha: float | None = None,
        label_smoothing: float = 0.0,
        name: str | None = None,
        reduction: str = "sum_over_batch_size",
        **kwargs,
    ):
        super().__init__(name=name or f"weighted_{kind}", reduction=reduction, **kwargs)
        if kind not in ("bce", "focal"):
            raise ValueError(f"BinaryLoss: kind {kind!r}; expected bce or focal")
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float32)
            if weights.ndim != 2 or weights.shape[0] != 2:
                raise ValueError(f"BinaryLoss: weights of shape {weights.shape}; expected (2, K) negative/positive per label")
        if alpha is not None and not 0.0 < alpha < 1.0:
            raise ValueError(f"train.loss.alpha: invalid value {alpha}; expected 0 < alpha < 1 or null")
        self.kind, self.weights = kind, weights
        self.gamma, self.alpha, self.label_smoothing = float(gamma), alpha, float(label_smoothing)

    def call(self, y_true, y_pred):
        y = ops.cast(y_true, "float32")
        p = _clip(y_pred)
        s = self.label_smoothing
        # A mixed target y is a y : (1 - y) mixture of a positive and a negative sample, so each
        # side keeps its own class weight (weighting ce(p, y) by y*w_pos + (1-y)*w_neg would not
        # be the mixed samples' loss) and the focal factor of its own target.
        pos = self._term(p, 1.0 - 0.5 * s)
        neg = self._term(p, 0.5 * s)
        if self.weights is not None:
            w = ops.convert_to_tensor(self.weights)
            pos, neg = pos * w[1], neg * w[0]
        return ops.mean(y * pos + (1.0 - y) * neg, axis=-1)

    def _term(self, p, ys: float):
        """Elementwise unweighted loss against the constant (smoothed) target ``ys``."""
        loss = -(ys * ops.log(p) + (1.0 - ys) * ops.log(1.0 - p))
        if self.kind == "focal":
            p_t = ys * p + (1.0 - ys) * (1.0 - p)
            loss = loss * ops.power(1.0 - p_t, self.gamma)
            if self.alpha is not None:
                loss = loss * (ys * self.alpha + (1.0 - ys) * (1.0 - self.alpha))
        return loss

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "kind": self.kind,
            "weights": None if self.weights is None else self.weights.tolist(),
            "gamma": self.gamma,
            "alpha": self.alpha,
            "label_smoothing": self.label_smoothing,
        }


@keras.saving.register_keras_serializable(package="medtl")
class CategoricalLoss(keras.losses.Loss):
    """Softmax cross-entropy or categorical focal loss with per-class weights.

    ``-w_c * sum_j a (1 - p_j)^gamma * t_j log p_j`` where ``t`` is the one-hot target smoothed
    to ``t(1 - s) + s/K``, ``w_c`` the weight of the sample's class, and the focal term (with
    ``a`` = alpha, or 1 when alpha is None) applies for ``kind="focal"`` only. A soft target row
    ``y`` (mixup, cutmix) gives ``sum_c y_c * L(c)``, ``L(c)`` that loss for class ``c``.

    Args:
        kind: ``"cce"`` or ``"focal"``.
        weights: ``(K,)`` class weights, or None.
        gamma: focusing parameter (focal only).
        alpha: a constant factor (focal only, as in Keras' CategoricalFocalCrossentropy), or None.
        label_smoothing: ``s`` in ``[0, 0.5)``.

    Example:
        >>> loss = CategoricalLoss("cce", weights=[1.0, 3.0])
    """

    def __init__(
        self,
        kind: str = "cce",
        weights: Sequence[float] | np.ndarray | None = None,
        gamma: float = 2.0,
        alpha: float | None = None,
        label_smoothing: float = 0.0,
        name: str | None = None,
        reduction: str = "sum_over_batch_size",
        **kwargs,
    ):
        super().__init__(name=name or f"weighted_{kind}", reduction=reduction, **kwargs)
        if kind not in ("cce", "focal"):
            raise ValueError(f"CategoricalLoss: kind {kind!r}; expected cce or focal")
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float32)
            if weights.ndim != 1:
                raise ValueError(f"CategoricalLoss: weights of shape {weights.shape}; expected (K,) one per class")
        if alpha is not None and not 0.0 < alpha <= 1.0:
            raise ValueError(f"train.loss.alpha: invalid value {alpha}; expected 0 < alpha <= 1 or null")
        self.kind, self.weights = kind, weights
        self.gamma, self.alpha, self.label_smoothing = float(gamma), alpha, float(label_smoothing)

    def call(self, y_true, y_pred):
        y = ops.cast(y_true, "float32")
        p = _clip(y_pred)
        k = ops.cast(ops.shape(y)[-1], "float32")
        s = self.label_smoothing
        if self.weights is None:
            ys = y * (1.0 - s) + s / k
        else:
            # Weights go into the target, so a mixed row y gives sum_c y_c w_c L(c) (each
            # class its own weight) rather than (sum_c y_c w_c) * L(y); equal for one-hot y.
            yw = y * ops.convert_to_tensor(self.weights)
            ys = yw * (1.0 - s) + (s / k) * ops.sum(yw, axis=-1, keepdims=True)
        terms = -ys * ops.log(p)
        if self.kind == "focal":
            terms = terms * ops.power(1.0 - p, self.gamma)
            if self.alpha is not None:
                terms = terms * self.alpha
        return ops.sum(terms, axis=-1)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "kind": self.kind,
            "weights": None if self.weights is None else self.weights.tolist(),
            "gamma": self.gamma,
            "alpha": self.alpha,
            "label_smoothing": self.label_smoothing,
        }


def make_loss(loss_cfg, task: str, class_weights: np.ndarray | None) -> keras.losses.Loss:
    """The loss for a run.

    Args:
        loss_cfg: ``cfg.train.loss`` (name bce/cce/focal, label_smoothing, gamma, alpha).
        task: ``binary``, ``multiclass`` or ``multilabel``.
        class_weights: from :func:`compute_class_weights` (``(2, K)`` or ``(K,)``), or None.

    Returns:
        A registered, serialisable :class:`BinaryLoss` or :class:`CategoricalLoss`.

    Raises:
        ValueError: a loss that does not fit the task, or weights of the wrong shape.

    Example:
        >>> loss = make_loss(cfg.train.loss, "multilabel", compute_class_weights(y, "balanced", labels))
    """
    name = loss_cfg.name
    if task not in TASKS:
        raise ValueError(f"task: invalid value {task!r}; expected one of {', '.join(TASKS)}")
    if name == "cce" and task != "multiclass":
        raise ValueError(f"train.loss.name: cce needs task multiclass (task is {task}); use bce or focal")
    if name == "bce" and task == "multiclass":
        raise ValueError("train.loss.name: bce is for binary/multilabel; use cce or focal for multiclass")
    if name not in ("bce", "cce", "focal"):
        raise ValueError(f"train.loss.name: invalid value {name!r}; expected bce, cce or focal")
    w = None if class_weights is None else np.asarray(class_weights, dtype=np.float32)
    common = dict(gamma=loss_cfg.gamma, alpha=loss_cfg.alpha, label_smoothing=loss_cfg.label_smoothing)
    if task == "multiclass":
        if w is not None and w.ndim != 1:
            raise ValueError(
                f"class weights of shape {w.shape} do not fit task multiclass; expected (K,) "
                "(compute_class_weights(..., task='multiclass'))"
            )
        return CategoricalLoss("focal" if name == "focal" else "cce", weights=w, **common)
    if w is not None and (w.ndim != 2 or w.shape[0] != 2):
        raise ValueError(
            f"class weights of shape {w.shape} do not fit task {task}; expected (2, K) negative/positive "
            f"per label (compute_class_weights(..., task='{task}'))"
        )
    return BinaryLoss("focal" if name == "focal" else "bce", weights=w, **common)
