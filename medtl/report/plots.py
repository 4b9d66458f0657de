"""The report's figures, drawn with matplotlib's Agg canvas and returned as PNG bytes.

Every ``plot_*`` function returns a :class:`matplotlib.figure.Figure` (no pyplot, so no global
state and no GUI backend); :func:`to_png` renders it at a known size (``figsize * dpi``) with no
metadata in the file, and :func:`data_uri` embeds the bytes in HTML. The curves are computed
here in numpy (:func:`roc_points`, :func:`pr_points`) so the tests can check the drawn data
against scikit-learn.

Example:
    >>> fig = plot_roc({"fold 0": (y0, s0), "pooled": (y, s)})
    >>> png = to_png(fig)              # 640 x 480 at the default size
    >>> html_img = f'<img src="{data_uri(png)}">'
"""

from __future__ import annotations

import base64
import io
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from medtl.stats.metrics import (
    as_binary_labels,
    as_scores,
    average_precision,
    reliability_curve,
    roc_auc,
)

__all__ = [
    "confusion_counts",
    "data_uri",
    "image_png",
    "new_figure",
    "plot_confusion",
    "plot_pr",
    "plot_reliability",
    "plot_roc",
    "plot_score_distribution",
    "plot_selective",
    "plot_training",
    "png_size",
    "pr_points",
    "roc_points",
    "to_png",
]

DEFAULT_SIZE = (6.4, 4.8)
DEFAULT_DPI = 100
_HIGHLIGHT = dict(color="black", linewidth=2.2, zorder=5)


# --------------------------------------------------------------------------------------------
# Rendering


def new_figure(size: tuple[float, float] = DEFAULT_SIZE) -> Figure:
    """A Figure on an Agg canvas, with constrained layout (labels never clipped)."""
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def to_png(fig: Figure, dpi: int = DEFAULT_DPI) -> bytes:
    """Render ``fig`` as PNG bytes of exactly ``figsize * dpi`` pixels, without metadata.

    Example:
        >>> png_size(to_png(new_figure((4, 3)), dpi=50))
        (200, 150)
    """
    buf = io.BytesIO()
    # Software=None drops matplotlib's only text chunk: the PNG holds pixels and nothing else.
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


def data_uri(png: bytes, mime: str = "image/png") -> str:
    """``data:image/png;base64,...`` for embedding ``png`` in HTML."""
    return f"data:{mime};base64,{base64.b64encode(png).decode('ascii')}"


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) read from a PNG's header.

    Raises:
        ValueError: the bytes are not a PNG.
    """
    if png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
        raise ValueError("not a PNG: the file signature or IHDR chunk is missing")
    return struct.unpack(">II", png[16:24])


def image_png(image: np.ndarray, max_side: int | None = 512) -> bytes:
    """PNG bytes of a grey (H, W) float image in [0, 1] or uint8 (H, W[, 3]) image.

    Args:
        image: the pixels.
        max_side: shrink (area interpolation, aspect kept) so the longer side is at most this.
    """
    a = np.asarray(image)
    if a.dtype != np.uint8:
        a = np.clip(np.rint(np.asarray(a, np.float64) * 255.0), 0, 255).astype(np.uint8)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    img = Image.fromarray(a)
    if max_side and max(img.size) > max_side:
        scale = max_side / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                         Image.Resampling.BOX)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# Curves


def _curve_counts(y_true: Any, y_score: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Cumulative (tp, fp) at each distinct score, descending, and the class totals."""
    y = as_binary_labels(y_true)
    s = as_scores(y_score, y.size)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last index of each tied block
    tp = np.cumsum(y)[last].astype(np.float64)
    fp = (last + 1 - tp).astype(np.float64)
    return tp, fp, s[last], int(y.sum()), int(y.size - y.sum())


def roc_points(y_true: Any, y_score: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve at every distinct score: (fpr, tpr, thresholds), from (0, 0) to (1, 1).

    Same as ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``; the first threshold
    is ``inf`` (nothing called positive). nan rates when a class is absent.
    """
    tp, fp, thr, n_pos, n_neg = _curve_counts(y_true, y_score)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = np.r_[0.0, tp] / n_pos
        fpr = np.r_[0.0, fp] / n_neg
    return fpr, tpr, np.r_[np.inf, thr]


def pr_points(y_true: Any, y_score: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision-recall curve at every distinct score: (precision, recall, thresholds).

    Ordered by increasing threshold and ending at (precision 1, recall 0) with no threshold,
    like ``sklearn.metrics.precision_recall_curve``.
    """
    tp, fp, thr, n_pos, _ = _curve_counts(y_true, y_score)
    precision = tp / (tp + fp)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = tp / n_pos
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], thr[::-1]


# --------------------------------------------------------------------------------------------
# Plots


def _legend(ax: Any, n: int) -> None:
    ax.legend(loc="lower right" if n <= 8 else "center left", fontsize=8 if n <= 8 else 6, frameon=True)


def plot_roc(curves: Mapping[str, tuple[Any, Any]], highlight: str | None = "pooled",
             title: str = "ROC curve", size: tuple[float, float] = DEFAULT_SIZE) -> Figure:
    """ROC curves, one line per entry; ``highlight`` (e.g. the pooled curve) drawn bold.

    Args:
        curves: name -> (0/1 labels, scores).
        highlight: the name drawn bold and black, if present.
        title: the axes title.
        size: figure size in inches.

    Example:
        >>> fig = plot_roc({"fold 0": ([0, 1, 1], [.2, .7, .4]), "pooled": ([0, 1, 1], [.2, .7, .4])})
    """
    fig = new_figure(size)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=1, label="chance")
    for name, (y, s) in curves.items():
        fpr, tpr, _ = roc_points(y, s)
        style = _HIGHLIGHT if name == highlight else dict(linewidth=1.2, alpha=0.8)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc(y, s):.3f})", gid=f"roc:{name}", **style)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity (false positive rate)",
           ylabel="sensitivity (true positive rate)", title=title, aspect="equal")
    ax.grid(alpha=0.3)
    _legend(ax, len(curves) + 1)
    return fig


def plot_pr(curves: Mapping[str, tuple[Any, Any]], highlight: str | None = "pooled",
            title: str = "Precision-recall curve", size: tuple[float, float] = DEFAULT_SIZE) -> Figure:
    """Precision-recall curves (steps), with the prevalence of ``highlight`` as the chance line.

    Args:
        curves: name -> (0/1 labels, scores).
        highlight: the name drawn bold and black, if present.
        title: the axes title.
        size: figure size in inches.
    """
    fig = new_figure(size)
    ax = fig.add_subplot()
    for name, (y, s) in curves.items():
        precision, recall, _ = pr_points(y, s)
        style = _HIGHLIGHT if name == highlight else dict(linewidth=1.2, alpha=0.8)
        ax.step(recall, precision, where="post", label=f"{name} (AP {average_precision(y, s):.3f})",
                gid=f"pr:{name}", **style)
    ref = curves.get(highlight) if highlight else None
    if ref is not None:
        prevalence = float(np.mean(as_binary_labels(ref[0])))
        ax.axhline(prevalence, linestyle=":", color="grey", linewidth=1,
                   label=f"chance (prevalence {prevalence:.2f})")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall (sensitivity)", ylabel="precision (PPV)",
           title=title)
    ax.grid(alpha=0.3)
    _legend(ax, len(curves) + 1)
    return fig


def plot_confusion(matrix: Any, class_names: Sequence[str], title: str = "Confusion matrix",
                   size: tuple[float, float] = (4.8, 4.2)) -> Figure:
    """A confusion matrix (rows: true class, columns: predicted) with counts and row percentages.

    Args:
        matrix: (K, K) counts.
        class_names: K names.
        title: the axes title (say which threshold made the decisions).
        size: figure size in inches.

    Example:
        >>> fig = plot_confusion([[50, 5], [3, 12]], ["normal", "pneumonia"], "threshold 0.42")
    """
    m = np.asarray(matrix, dtype=np.int64)
    k = len(class_names)
    if m.shape != (k, k):
        raise ValueError(f"plot_confusion: matrix shape {m.shape} does not match {k} class names")
    fig = new_figure(size)
    ax = fig.add_subplot()
    rows = m.sum(axis=1, keepdims=True)
    frac = np.divide(m, rows, out=np.zeros(m.shape, np.float64), where=rows > 0)
    ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{m[i, j]}\n({100 * frac[i, j]:.0f}%)", ha="center", va="center",
                    color="white" if frac[i, j] > 0.5 else "black", fontsize=11, gid=f"cell:{i},{j}")
    ax.set_xticks(range(k), class_names, rotation=30 if k > 3 else 0)
    ax.set_yticks(range(k), class_names)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    return fig


def confusion_counts(y_true: Any, y_score: Any, threshold: Any) -> np.ndarray:
    """2 x 2 counts [[tn, fp], [fn, tp]] with ``score >= threshold`` (a number, or one per row)."""
    y = as_binary_labels(y_true)
    s = as_scores(y_score, y.size)
    pred = (s >= np.broadcast_to(np.asarray(threshold, np.float64), s.shape)).astype(np.int8)
    return np.array([[np.sum((y == 0) & (pred == 0)), np.sum((y == 0) & (pred == 1))],
                     [np.sum((y == 1) & (pred == 0)), np.sum((y == 1) & (pred == 1))]], dtype=np.int64)


def plot_selective(curve: Mapping[str, Sequence[Any]], title: str = "Films to refer",
                   size: tuple[float, float] = DEFAULT_SIZE) -> Figure:
    """Accuracy and balanced accuracy against the share of films kept, from
    :func:`medtl.stats.selective.selective_curve` (the least confident films referred first).

    The x axis runs from 100% kept (nothing referred) on the left down to the smallest share;
    a dotted line marks 90% kept (the least certain 10% referred).

    Example:
        >>> png = to_png(plot_selective(selective_curve(y, s, t)))
    """
    kept = 100 * np.asarray(curve["kept"], dtype=np.float64)
    fig = new_figure(size)
    ax = fig.subplots()
    ax.plot(kept, curve["accuracy"], marker="o", color="C0", label="accuracy", gid="accuracy")
    bal = np.array([np.nan if v is None else v for v in curve["balanced_accuracy"]], dtype=np.float64)
    if np.isfinite(bal).any():
        ax.plot(kept, bal, marker="s", color="C1", label="balanced accuracy", gid="balanced_accuracy")
    ax.axvline(90, linestyle=":", color="grey", linewidth=1)
    ax.set(xlim=(kept.max() + 2, kept.min() - 2), xlabel="films kept (%); the least confident referred first",
           ylabel="on the films kept", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return fig


def plot_score_distribution(groups: Mapping[str, Any], threshold: float | None = None, n_bins: int = 20,
                            title: str = "Score distribution", xlabel: str = "score",
                            size: tuple[float, float] = DEFAULT_SIZE) -> Figure:
    """Overlaid histograms of scores, one per group (e.g. per true class), on shared bins.

    Args:
        groups: name -> scores; empty groups are left out.
        threshold: drawn as a dashed vertical line when given.
        n_bins: equal-width bins over [0, 1] (widened to the scores' range if they leave it).
        title: the axes title.
        xlabel: the x axis label (say which score).
        size: figure size in inches.

    Example:
        >>> fig = plot_score_distribution({"normal": [.1, .2], "pneumonia": [.7, .9]}, threshold=0.5)
    """
    vals = {k: np.asarray(v, dtype=np.float64).ravel() for k, v in groups.items()}
    vals = {k: v[np.isfinite(v)] for k, v in vals.items() if np.isfinite(v).any()}
    lo = min([0.0, *(v.min() for v in vals.values())])
    hi = max([1.0, *(v.max() for v in vals.values())])
    edges = np.linspace(lo, hi, n_bins + 1)
    fig = new_figure(size)
    ax = fig.add_subplot()
    for i, (name, v) in enumerate(vals.items()):
        ax.hist(v, bins=edges, alpha=0.55, color=f"C{i}", edgecolor="white", label=f"{name} ({v.size})",
                gid=f"hist:{name}")
    if threshold is not None:
        ax.axvline(float(threshold), linestyle="--", color="black", linewidth=1.2,
                   label=f"threshold {float(threshold):.3f}", gid="threshold")
    ax.set(xlim=(lo, hi), xlabel=xlabel, ylabel="films", title=title)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper center", fontsize=8)
    return fig


def plot_reliability(y_true: Any, y_prob: Any, n_bins: int = 10, title: str = "Calibration",
                     size: tuple[float, float] = (5.6, 5.6)) -> Figure:
    """Reliability diagram (observed frequency against mean predicted probability per bin)
    above a histogram of the predictions, from :func:`medtl.stats.metrics.reliability_curve`.

    Empty bins are left out of the line. The title carries the expected calibration error.
    """
    c = reliability_curve(y_true, y_prob, n_bins=n_bins)
    ok = c["count"] > 0
    weights = c["count"][ok] / c["count"].sum()
    ece = float(np.sum(weights * np.abs(c["mean_predicted"][ok] - c["fraction_positive"][ok])))
    fig = new_figure(size)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=1, label="perfectly calibrated")
    top.plot(c["mean_predicted"][ok], c["fraction_positive"][ok], marker="o", color="C0",
             label="model", gid="reliability")
    top.set(xlim=(0, 1), ylim=(0, 1.01), ylabel="observed fraction positive",
            title=f"{title} (ECE {ece:.3f}, {n_bins} bins)")
    top.grid(alpha=0.3)
    top.legend(loc="upper left", fontsize=8)
    edges = c["bin_edges"]
    bottom.bar(edges[:-1], c["count"], width=np.diff(edges), align="edge", color="C0", alpha=0.6,
               edgecolor="white", gid="histogram")
    bottom.set(xlabel="predicted probability", ylabel="images")
    return fig


def plot_training(history: pd.DataFrame, monitor: str = "val_roc_auc", title: str = "Training",
                  size: tuple[float, float] = (9.0, 3.6)) -> Figure:
    """Loss and the monitored metric per epoch over all stages, stage boundaries marked.

    Args:
        history: one row per epoch with ``stage``, ``global_epoch`` (or ``epoch``) and the
            logged values (``loss``, ``val_loss``, ``monitor`` and its training counterpart).
        monitor: the metric early stopping watched. The epoch of the saved model is starred:
            the last one the history's ``best`` column marks, else the monitor's best value.
        title: the figure title (e.g. the fold).
        size: figure size in inches.

    Raises:
        ValueError: the history has no epoch column.
    """
    h = history.reset_index(drop=True)
    xcol = "global_epoch" if "global_epoch" in h else "epoch" if "epoch" in h else None
    if xcol is None:
        raise ValueError(f"history: no global_epoch or epoch column (has {', '.join(map(str, h.columns))}); "
                         "pass the history.csv written by medtl.train")
    x = h[xcol].to_numpy(dtype=np.float64)
    fig = new_figure(size)
    fig.suptitle(title)
    ax_loss, ax_metric = fig.subplots(1, 2)
    for ax, names, label in (
        (ax_loss, ["loss", "val_loss"], "loss"),
        (ax_metric, [_train_name(monitor), monitor], monitor),
    ):
        for name in dict.fromkeys(names):
            if name in h:
                ax.plot(x, h[name].to_numpy(dtype=np.float64), marker=".",
                        linestyle="--" if not name.startswith("val_") else "-", label=name, gid=f"line:{name}")
        ax.set(xlabel="epoch (all stages)", ylabel=label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        _stage_marks(ax, h, x)
        if ax.lines:
            ax.legend(fontsize=8)
    if monitor in h and h[monitor].notna().any():
        vals = h[monitor].to_numpy(dtype=np.float64)
        best = _saved_epoch(h)
        if best is None:
            best = int(np.nanargmin(vals) if monitor.endswith("loss") else np.nanargmax(vals))
        ax_metric.plot([x[best]], [vals[best]], marker="*", markersize=12, color="black",
                       linestyle="none", label="best", gid="best")
        ax_metric.legend(fontsize=8)
    return fig


def _saved_epoch(h: pd.DataFrame) -> int | None:
    """Row of the saved model: the last one the trainer marked as a new best (its ``best``
    column). The trainer breaks ties in the monitor by the lower validation loss, so the first
    maximum of the monitor can be an earlier epoch than the one it kept."""
    if "best" not in h:
        return None
    rows = np.flatnonzero(h["best"].map(lambda v: str(v).strip().lower() in ("true", "1", "1.0")).to_numpy())
    return int(rows[-1]) if len(rows) else None


def _train_name(monitor: str) -> str:
    return monitor[4:] if monitor.startswith("val_") else monitor


def _stage_marks(ax: Any, h: pd.DataFrame, x: np.ndarray) -> None:
    """Dotted vertical lines between stages and the stage number above each."""
    if "stage" not in h or len(h) == 0:
        return
    stages = h["stage"].to_numpy()
    changes = np.flatnonzero(stages[1:] != stages[:-1])
    for i in changes:
        ax.axvline((x[i] + x[i + 1]) / 2, color="grey", linestyle=":", linewidth=1, gid="stage-boundary")
    starts = np.r_[0, changes + 1]
    for a, b in zip(starts, np.r_[changes, len(x) - 1]):
        ax.text((x[a] + x[b]) / 2, 1.0, f"stage {stages[a]}", transform=ax.get_xaxis_transform(),
                ha="center", va="bottom", fontsize=7, color="grey")
