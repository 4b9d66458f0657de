"""Do heat maps point at annotated findings? Scores per film, chance baselines and intervals.

TF-free (numpy and scipy.ndimage only), so an independent scorer can be checked against it.
Every map and annotation is an (H, W) array at the film's own resolution (what
:func:`medtl.explain.files.maps_for_files` returns), one map per film, with one or more
annotation *regions* per film (a box row or a mask file each; see
:mod:`medtl.data.annotations`). The *annotation* of a film is the union of its regions.

Definitions (the README's "Do the maps point at the findings?" states the same):

- **Pointing game** (Zhang et al. 2016): 1 when a pixel holding the map's maximum lies inside
  the annotation (ties: any maximal pixel counts), else 0. A constant map has no location: it
  scores the annotation's area share, what a uniformly random pixel would (the flat baseline).
- **Heat in box**: the map shifted to a minimum of 0, summed inside the annotation, divided by
  its total sum; a constant map scores the annotation's area share.
- **IoU / IoBB** (Wang et al. 2017, ChestX-ray8, section 4.2): the map shifted to a minimum of
  0 is thresholded at ``hot_fraction`` (default 0.5) of its maximum (``m >= f * max``); the
  predicted box is the bounding box of the largest 8-connected hot component (ties: the first
  in raster order; a constant map: the whole film). Against each region A, IoU = |B ∩ A| /
  |B ∪ A| and IoBB = |B ∩ A| / |B| (area of the predicted box B, as in ChestX-ray8), in pixels;
  a film's value is the best over its regions. A film is a *hit* when IoU > ``iou_hit`` (0.3)
  or IoBB > ``iobb_hit`` (0.1); the figure reported is the hit rate.
- **Baselines**, scored by the same functions: *flat* (a constant map), *film centre* (a
  Gaussian centred on the film, sigma a quarter of each side), and the *mean-annotation prior*
  (the mean of the OTHER scored films' annotations, each resampled to a 64x64 grid of the
  film's relative coordinates, averaged, and bilinearly resized to this film: leave-one-film-out,
  so it is never tuned on the film it scores; with one film it is the flat map).
- **Intervals**: the mean over films, with a patient-bootstrap percentile interval (patients
  drawn with replacement by :func:`medtl.stats.bootstrap.resample_weights`, each replicate the
  weighted mean of the per-film scores).
- **Not better than chance**: a method's measure is not better than chance when its interval's
  lower end is at or below the best (highest) baseline's point value (``low <= best``): the
  interval includes that value, or lies below it.

Example:
    >>> m = np.zeros((4, 4)); m[1, 1] = 1.0
    >>> a = np.zeros((4, 4), bool); a[:2, :2] = True
    >>> s = score_film(m, [a]); s["pointing"], s["heat_in_box"], s["iobb"], s["iou"]
    (1.0, 1.0, 1.0, 0.25)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from medtl.stats.bootstrap import Interval, resample_weights

__all__ = [
    "HOT_FRACTION", "IOU_HIT", "IOBB_HIT", "MEASURES", "MEASURE_LABELS", "BASELINES", "BASELINE_LABELS",
    "NOT_POINTING", "pointing_game", "heat_in_box", "hot_box", "box_overlap", "score_film",
    "centre_map", "prior_maps", "mean_interval", "summarise",
]

HOT_FRACTION = 0.5  #: share of the map's maximum from which a pixel is hot (IoU / IoBB)
IOU_HIT = 0.3  #: IoU above this is a hit
IOBB_HIT = 0.1  #: IoBB above this is a hit (ChestX-ray8's loosest threshold)
PRIOR_GRID = 64  #: side of the grid the mean-annotation prior is averaged on

#: The per-film measures summarised, in report order.
MEASURES = ("pointing", "heat_in_box", "iou_hit", "iobb_hit")
MEASURE_LABELS = {"pointing": "pointing game", "heat_in_box": "heat in annotation",
                  "iou_hit": "IoU hit rate", "iobb_hit": "IoBB hit rate"}
BASELINES = ("flat", "centre", "prior")
BASELINE_LABELS = {"flat": "flat map", "centre": "film centre", "prior": "mean-annotation prior"}
#: The words said (console, localisation.json, report) when a method is not better than chance.
NOT_POINTING = "the maps do not point at the annotated findings; the model may rely on other cues"


def _check(m: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m = np.asarray(m, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if m.ndim != 2 or m.shape != mask.shape:
        raise ValueError(f"map {m.shape} and annotation {mask.shape}: need two (H, W) arrays of the same size")
    if not np.isfinite(m).all():
        raise ValueError("map: holds nan or inf; compute the map again (a finite map is needed)")
    return m, mask


def _is_constant(m: np.ndarray) -> bool:
    return bool(m.max() == m.min())


def pointing_game(m: np.ndarray, mask: np.ndarray) -> float:
    """1.0 when a maximal pixel of ``m`` lies in ``mask``, else 0.0; a constant map: ``mask``'s
    area share.

    Example:
        >>> pointing_game(np.eye(3), np.eye(3, dtype=bool)), pointing_game(np.ones((2, 2)), np.eye(2, dtype=bool))
        (1.0, 0.5)
    """
    m, mask = _check(m, mask)
    if _is_constant(m):
        return float(mask.mean())
    return float(mask[m == m.max()].any())


def heat_in_box(m: np.ndarray, mask: np.ndarray) -> float:
    """Share of the min-shifted map's sum inside ``mask``; a constant map: ``mask``'s area share.

    Example:
        >>> heat_in_box(np.array([[0., 1.], [3., 0.]]), np.array([[True, True], [False, False]]))
        0.25
    """
    m, mask = _check(m, mask)
    if _is_constant(m):
        return float(mask.mean())
    h = m - m.min()
    return float(h[mask].sum() / h.sum())


def hot_box(m: np.ndarray, hot_fraction: float = HOT_FRACTION) -> tuple[int, int, int, int]:
    """(row0, row1, col0, col1), ends exclusive: the bounding box of the largest 8-connected
    component of ``m - m.min() >= hot_fraction * (m.max() - m.min())``.

    Example:
        >>> m = np.zeros((5, 5)); m[0, 0] = 1; m[2:4, 1:4] = 0.8
        >>> hot_box(m)
        (2, 4, 1, 4)
    """
    if not 0.0 < hot_fraction <= 1.0:
        raise ValueError(f"hot_fraction: invalid value {hot_fraction!r}; expected 0 < f <= 1 (0.5 is usual)")
    m = np.asarray(m, dtype=np.float64)
    if _is_constant(m):
        return 0, m.shape[0], 0, m.shape[1]
    h = m - m.min()
    labels, n = ndimage.label(h >= hot_fraction * h.max(), structure=np.ones((3, 3), int))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    best = int(np.argmax(sizes)) + 1  # argmax takes the first of equal sizes: raster order
    rows, cols = np.nonzero(labels == best)
    return int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1


def box_overlap(box: tuple[int, int, int, int], region: np.ndarray) -> tuple[float, float]:
    """(IoU, IoBB) of the box (row0, row1, col0, col1) with a boolean region, in pixels.

    Example:
        >>> a = np.zeros((4, 4), bool); a[:2, :2] = True
        >>> box_overlap((0, 1, 0, 4), a)  # 2 shared pixels; box 4, union 6
        (0.3333333333333333, 0.5)
    """
    r0, r1, c0, c1 = box
    region = np.asarray(region, dtype=bool)
    inter = float(region[r0:r1, c0:c1].sum())
    area = float((r1 - r0) * (c1 - c0))
    union = area + float(region.sum()) - inter
    return (inter / union if union else 0.0), (inter / area if area else 0.0)


def score_film(m: np.ndarray, regions: Sequence[np.ndarray], hot_fraction: float = HOT_FRACTION,
               iou_hit: float = IOU_HIT, iobb_hit: float = IOBB_HIT) -> dict[str, float]:
    """Every measure of one map against one film's annotation regions.

    Args:
        m: the map (H, W) at the film's resolution.
        regions: boolean (H, W) arrays, one per box or mask; at least one.
        hot_fraction: threshold of the hot region, a fraction of the map's maximum.
        iou_hit, iobb_hit: IoU and IoBB above these are hits.

    Returns:
        ``pointing``, ``heat_in_box``, ``iou``, ``iobb`` (best over the regions), ``iou_hit``
        and ``iobb_hit`` (1.0 / 0.0).

    Example:
        >>> a = np.zeros((4, 4), bool); a[2:, 2:] = True
        >>> score_film(np.ones((4, 4)), [a])["pointing"]
        0.25
    """
    if not len(regions):
        raise ValueError("regions: empty; a scored film needs at least one annotation box or mask")
    union = np.logical_or.reduce([np.asarray(r, dtype=bool) for r in regions])
    m, union = _check(m, union)
    box = hot_box(m, hot_fraction)
    overlaps = [box_overlap(box, r) for r in regions]
    iou = max(o[0] for o in overlaps)
    iobb = max(o[1] for o in overlaps)
    return {"pointing": pointing_game(m, union), "heat_in_box": heat_in_box(m, union), "iou": iou,
            "iobb": iobb, "iou_hit": float(iou > iou_hit), "iobb_hit": float(iobb > iobb_hit)}


def centre_map(shape: tuple[int, int]) -> np.ndarray:
    """A Gaussian centred on the film, sigma a quarter of each side (the film-centre baseline).

    Example:
        >>> [int(i) for i in np.unravel_index(np.argmax(centre_map((5, 7))), (5, 7))]
        [2, 3]
    """
    h, w = shape
    y = (np.arange(h) + 0.5 - h / 2) / (h / 4)
    x = (np.arange(w) + 0.5 - w / 2) / (w / 4)
    return np.exp(-0.5 * (y[:, None] ** 2 + x[None, :] ** 2))


def _to_grid(mask: np.ndarray, g: int) -> np.ndarray:
    """Share of each cell of a g x g grid over the film that ``mask`` covers (the mean of the
    pixels whose top-left corner falls in the cell)."""
    h, w = mask.shape
    rows = (np.arange(h) * g) // h
    cols = (np.arange(w) * g) // w
    cell = rows[:, None] * g + cols[None, :]
    covered = np.bincount(cell.ravel(), weights=mask.ravel().astype(np.float64), minlength=g * g)
    pixels = np.bincount(cell.ravel(), minlength=g * g).astype(np.float64)
    # A film smaller than the grid leaves cells without a pixel centre: they take the pixel
    # under their own centre.
    centre = mask[((np.arange(g) + 0.5) * h / g).astype(int)][:, ((np.arange(g) + 0.5) * w / g).astype(int)]
    return np.where(pixels > 0, covered / np.maximum(pixels, 1.0), centre.ravel()).reshape(g, g)


def _bilinear(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``a`` resized to ``shape`` by bilinear interpolation between cell centres."""
    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, pos - lo

    r0, r1, fr = axis(a.shape[0], shape[0])
    c0, c1, fc = axis(a.shape[1], shape[1])
    rows = a[r0] * (1 - fr)[:, None] + a[r1] * fr[:, None]
    return rows[:, c0] * (1 - fc)[None, :] + rows[:, c1] * fc[None, :]


def prior_maps(annotations: Sequence[np.ndarray], grid: int = PRIOR_GRID) -> list[np.ndarray]:
    """Leave-one-film-out mean-annotation priors: for film i, the mean of the other films'
    annotations on a ``grid`` x ``grid`` grid of relative coordinates, resized to film i.

    Example:
        >>> a = np.zeros((8, 8), bool); a[:4, :4] = True
        >>> b = np.zeros((4, 4), bool); b[2:, 2:] = True
        >>> p = prior_maps([a, b]); p[0].shape, bool(p[1][0, 0] > p[1][3, 3])
        ((8, 8), True)
    """
    cells = [_to_grid(np.asarray(a, dtype=bool), grid) for a in annotations]
    if len(cells) < 2:  # no other film to learn a prior from
        return [np.ones(np.shape(a)) for a in annotations]
    total = np.sum(cells, axis=0)
    return [_bilinear((total - c) / (len(cells) - 1), np.shape(a)) for c, a in zip(cells, annotations)]


def mean_interval(values: Any, groups: Any = None, n_boot: int = 1000, alpha: float = 0.05,
                  seed: int = 0) -> Interval:
    """The mean of per-film scores with a patient-bootstrap percentile interval.

    Replicate b's value is ``w_b @ values / w_b.sum()`` for the multiplicities ``w_b`` of
    :func:`~medtl.stats.bootstrap.resample_weights` (``n``, ``groups``, ``n_boot``, ``seed``);
    the interval is ``np.quantile`` of the replicates at alpha/2 and 1 - alpha/2.

    Example:
        >>> iv = mean_interval([1, 0, 1, 1], groups=["a", "a", "b", "c"], n_boot=200)
        >>> iv.point, iv.low <= iv.point <= iv.high
        (0.75, True)
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"values: expected one score per film (N,), got shape {v.shape}")
    if not v.size:
        nan = float("nan")
        return Interval(nan, nan, nan, int(n_boot), int(n_boot), float(alpha), "percentile")
    reps = np.concatenate([(w @ v) / w.sum(axis=1) for w in resample_weights(v.size, groups, n_boot, seed)])
    low, high = np.quantile(reps, [alpha / 2.0, 1.0 - alpha / 2.0])
    return Interval(float(v.mean()), float(low), float(high), int(n_boot), 0, float(alpha), "percentile")


def summarise(scores: Mapping[str, Mapping[str, Sequence[float]]], groups: Any = None,
              labels: Mapping[str, str] | None = None, n_boot: int = 1000, alpha: float = 0.05,
              seed: int = 0) -> dict[str, Any]:
    """Intervals per map and measure, and the verdict of each method against the baselines.

    Args:
        scores: map name -> measure -> per-film scores, the same films in the same order for
            every map; the names of :data:`BASELINES` are the baselines, the others methods.
        groups: patient id per film (None: every film its own patient).
        labels: display label per method name (e.g. ``{"gradcam": "Grad-CAM"}``).
        n_boot, alpha, seed: the bootstrap (every map and measure uses the same replicates).

    Returns:
        ``{"methods": {name: {measure: {point, low, high, baseline, baseline_value,
        better_than_chance}}}, "baselines": {name: {measure: {point, low, high}}},
        "verdicts": {name: sentence}}``.

    Example:
        >>> s = summarise({"gradcam": {"pointing": [1, 1]}, "flat": {"pointing": [.1, .2]}}, n_boot=50)
        >>> s["methods"]["gradcam"]["pointing"]["better_than_chance"]
        True
    """
    labels = dict(labels or {})
    iv = {name: {k: mean_interval(v, groups, n_boot, alpha, seed) for k, v in per.items()}
          for name, per in scores.items()}
    base = {b: iv[b] for b in BASELINES if b in iv}
    out: dict[str, Any] = {"methods": {}, "verdicts": {},
                           "baselines": {b: {k: _ends(i) for k, i in per.items()} for b, per in base.items()}}
    for name, per in iv.items():
        if name in BASELINES:
            continue
        rows, weak = {}, []
        for k, i in per.items():
            cands = [(b, base[b][k].point) for b in base if k in base[b] and np.isfinite(base[b][k].point)]
            best, value = max(cands, key=lambda c: c[1]) if cands else ("", float("nan"))
            # The rule: better only when the whole interval lies above the best baseline's value.
            better = bool(np.isfinite(i.low) and np.isfinite(value) and i.low > value)
            rows[k] = {**_ends(i), "baseline": best, "baseline_value": _r(value), "better_than_chance": better}
            if not better:
                weak.append(f"{MEASURE_LABELS.get(k, k)} {_fmt(i)} vs {BASELINE_LABELS.get(best, best)} "
                            f"{value:.3f}")
        label = labels.get(name, name)
        out["methods"][name] = rows
        out["verdicts"][name] = (f"{label}: not better than chance on {'; '.join(weak)}: {NOT_POINTING}" if weak
                                 else f"{label}: better than every chance baseline on every measure")
    return out


def _r(x: float) -> float | None:
    return None if not np.isfinite(x) else round(float(x), 4)


def _ends(i: Interval) -> dict[str, float | None]:
    return {"point": _r(i.point), "low": _r(i.low), "high": _r(i.high)}


def _fmt(i: Interval) -> str:
    return f"{i.point:.3f} [{i.low:.3f}, {i.high:.3f}]"
