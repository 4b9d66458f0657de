"""The report's figures: the drawn data equal scikit-learn's, and the PNGs are what they claim."""

from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.calibration import calibration_curve
from sklearn.metrics import confusion_matrix, precision_recall_curve, roc_auc_score, roc_curve

from medtl.report import plots


@pytest.fixture
def scored():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    s = np.round(np.clip(0.3 + 0.4 * y + rng.normal(0, 0.25, 300), 0, 1), 2)  # rounding makes ties
    return y, s


def _line(fig, gid):
    lines = [ln for ax in fig.axes for ln in ax.lines if ln.get_gid() == gid]
    assert len(lines) == 1, f"expected one line {gid!r}"
    return lines[0]


def test_roc_and_pr_points_equal_sklearn(scored):
    y, s = scored
    for ours, ref in zip(plots.roc_points(y, s), roc_curve(y, s, drop_intermediate=False)):
        np.testing.assert_allclose(ours, ref)
    for ours, ref in zip(plots.pr_points(y, s), precision_recall_curve(y, s)):
        np.testing.assert_allclose(ours, ref)


def test_roc_plot_draws_sklearn_curve_and_auc(scored):
    y, s = scored
    half = np.arange(y.size) < 150
    fig = plots.plot_roc({"fold 0": (y[half], s[half]), "pooled": (y, s)})
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    line = _line(fig, "roc:pooled")
    np.testing.assert_allclose(line.get_xdata(), fpr)
    np.testing.assert_allclose(line.get_ydata(), tpr)
    assert line.get_label() == f"pooled (AUC {roc_auc_score(y, s):.3f})"
    assert line.get_linewidth() > _line(fig, "roc:fold 0").get_linewidth()  # pooled is bold


def test_pr_plot_draws_sklearn_curve(scored):
    y, s = scored
    fig = plots.plot_pr({"pooled": (y, s)})
    precision, recall, _ = precision_recall_curve(y, s)
    line = _line(fig, "pr:pooled")
    np.testing.assert_allclose(line.get_xdata(), recall)
    np.testing.assert_allclose(line.get_ydata(), precision)
    prevalence = [ln for ln in fig.axes[0].lines if ln.get_label().startswith("chance")][0]
    assert prevalence.get_ydata()[0] == pytest.approx(y.mean())


def test_png_has_the_figure_size_and_no_metadata():
    png = plots.to_png(plots.plot_roc({"a": ([0, 1, 1, 0], [0.1, 0.8, 0.6, 0.3])}, size=(5, 4)), dpi=80)
    assert plots.png_size(png) == (400, 320)
    with Image.open(io.BytesIO(png)) as im:
        im.load()
        assert im.size == (400, 320)
        assert im.info.get("Software") is None and not getattr(im, "text", {})
    uri = plots.data_uri(png)
    assert uri.startswith("data:image/png;base64,")
    assert base64.b64decode(uri.split(",", 1)[1]) == png
    with pytest.raises(ValueError, match="not a PNG"):
        plots.png_size(b"GIF89a" + b"\0" * 30)


def test_confusion_counts_with_per_row_thresholds_equal_sklearn(scored):
    y, s = scored
    t = np.where(np.arange(y.size) % 2 == 0, 0.4, 0.6)  # two folds, two thresholds
    cm = plots.confusion_counts(y, s, t)
    np.testing.assert_array_equal(cm, confusion_matrix(y, (s >= t).astype(int)))
    fig = plots.plot_confusion(cm, ["normal", "lesion"], "each fold's own threshold")
    cells = {t.get_gid(): t.get_text() for t in fig.axes[0].texts}
    assert cells["cell:1,1"].startswith(f"{cm[1, 1]}\n")
    assert cells["cell:0,1"] == f"{cm[0, 1]}\n({100 * cm[0, 1] / cm[0].sum():.0f}%)"
    with pytest.raises(ValueError, match="does not match 3 class names"):
        plots.plot_confusion(cm, ["a", "b", "c"])


def test_reliability_plot_points_equal_sklearn_calibration_curve(scored):
    y, s = scored
    fig = plots.plot_reliability(y, s, n_bins=10)
    frac, mean_pred = calibration_curve(y, s, n_bins=10)
    line = _line(fig, "reliability")
    np.testing.assert_allclose(line.get_xdata(), mean_pred)
    np.testing.assert_allclose(line.get_ydata(), frac)
    bars = [p.get_height() for p in fig.axes[1].patches]
    assert sum(bars) == y.size


def test_training_plot_marks_stages_and_best_epoch():
    h = pd.DataFrame({"stage": [1, 1, 2, 2, 2], "global_epoch": [1, 2, 3, 4, 5],
                      "loss": [.9, .7, .6, .5, .4], "val_loss": [1., .8, .7, .75, .8],
                      "roc_auc": [.6, .7, .8, .85, .9], "val_roc_auc": [.5, .6, .8, .7, .75]})
    fig = plots.plot_training(h, monitor="val_roc_auc")
    loss_ax, metric_ax = fig.axes
    for ax in (loss_ax, metric_ax):
        bounds = [ln.get_xdata()[0] for ln in ax.lines if ln.get_gid() == "stage-boundary"]
        assert bounds == [2.5]
        assert [t.get_text() for t in ax.texts] == ["stage 1", "stage 2"]
    np.testing.assert_allclose(_line(fig, "line:val_loss").get_ydata(), h["val_loss"])
    best = _line(fig, "best")
    assert (best.get_xdata()[0], best.get_ydata()[0]) == (3, 0.8)
    assert plots.png_size(plots.to_png(fig, dpi=50)) == (450, 180)
    with pytest.raises(ValueError, match="no global_epoch or epoch column"):
        plots.plot_training(h[["loss", "val_loss"]], monitor="val_roc_auc")


def test_training_plot_stars_the_saved_epoch_when_the_monitor_ties():
    # Epochs 1 and 3 reach the same val_roc_auc; the trainer kept epoch 3 (lower val_loss) and
    # marked it in the history's best column, as read back from history.csv (strings).
    h = pd.DataFrame({"stage": [1, 1, 1, 1], "global_epoch": [1, 2, 3, 4],
                      "loss": [.9, .7, .6, .5], "val_loss": [.6, .5, .2, .3],
                      "val_roc_auc": [1.0, .9, 1.0, 1.0], "best": ["True", "False", "True", "False"]})
    best = _line(plots.plot_training(h, monitor="val_roc_auc"), "best")
    assert (best.get_xdata()[0], best.get_ydata()[0]) == (3, 1.0)
    # Without the column (an older history), the first best value is starred.
    best = _line(plots.plot_training(h.drop(columns="best"), monitor="val_roc_auc"), "best")
    assert best.get_xdata()[0] == 1


def test_image_png_shrinks_to_max_side_and_keeps_values():
    img = np.zeros((1000, 500), np.float32)
    img[:, 250:] = 1.0
    png = plots.image_png(img, max_side=200)
    assert plots.png_size(png) == (100, 200)
    with Image.open(io.BytesIO(png)) as im:
        a = np.asarray(im)
    assert a[:, :40].max() == 0 and a[:, 60:].min() == 255
    assert plots.png_size(plots.image_png(np.zeros((8, 6, 3), np.uint8), max_side=None)) == (6, 8)


def test_selective_plot_draws_the_curve():
    from medtl.stats.selective import selective_curve

    c = selective_curve([1, 0, 0, 1, 1, 0], [0.9, 0.1, 0.6, 0.45, 0.8, 0.3], 0.5)
    fig = plots.plot_selective(c)
    ax = fig.axes[0]
    line = next(ln for ln in ax.get_lines() if ln.get_gid() == "accuracy")
    np.testing.assert_allclose(line.get_xdata(), 100 * np.asarray(c["kept"]))
    np.testing.assert_allclose(line.get_ydata(), c["accuracy"])
    assert ax.get_xlim()[0] > ax.get_xlim()[1]  # 100% kept on the left
    assert plots.png_size(plots.to_png(fig)) == (640, 480)


def test_score_distribution_plot_counts_each_group_on_shared_bins():
    rng = np.random.default_rng(0)
    a, b = rng.random(30), rng.random(12)
    fig = plots.plot_score_distribution({"neg": a, "pos": b, "none": []}, threshold=0.4, n_bins=10)
    ax = fig.axes[0]
    for name, v in (("neg", a), ("pos", b)):
        bars = [p for p in ax.patches if p.get_gid() == f"hist:{name}"]
        assert [int(p.get_height()) for p in bars] == np.histogram(v, bins=np.linspace(0, 1, 11))[0].tolist()
    assert not [p for p in ax.patches if p.get_gid() == "hist:none"]  # an empty group draws nothing
    assert _line(fig, "threshold").get_xdata()[0] == pytest.approx(0.4)
    assert plots.png_size(plots.to_png(fig)) == (640, 480)
