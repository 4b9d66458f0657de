"""Which map to trust without annotations: deletion and insertion curves against random maps.

For each film and method, the map (at the input resolution) ranks the pixels. The deletion
curve is the model's probability for the class as the top k% of pixels are replaced by a
blurred copy of the film, k = 0 .. 100%; the insertion curve starts from the blurred film and
puts the top k% of the original back. A faithful map has a small area under the deletion
curve and a large one under the insertion curve. A uniform-random map, scored the same way on
the same films, is the chance level: a method is only worth showing where it beats it.

The chance level depends on the map's grain. A coarse map moves whole cells, a pixel-wise
random map scatters single pixels, and scattered pixels put a blurred lesion back as a dotted
blob the convolutions see at once: on insertion, a pixel-wise random map beats any honest 16x16
map. So each method is compared with random maps drawn on its own grid and resized to the input
as its maps are (``random_by_grid``); the pixel-wise random map stays in ``random``.

Blurring rather than painting a constant keeps the altered films closer to films the model has
seen, so a drop in the score is less a reaction to an unnatural patch (the concern of ROAD,
Rong et al. 2022). All steps of a film go through the model in one call.

Example:
    >>> res = faithfulness(model, x, ["gradcam", "layercam", "occlusion"], steps=10)
    >>> res["methods"]["gradcam"]["deletion"]["point"] < res["random"]["deletion"]["point"]
    True
    >>> rows = faithfulness_table(res)  # for the report's "which map to trust" table
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import keras
import numpy as np
from scipy.ndimage import gaussian_filter

from medtl.explain.cam import ClassIndex, _resize, _selector, compute_cam, map_grid
from medtl.registry import map_methods, method_label, takes_target_layer
from medtl.stats.faithfulness import curve_auc, mean_interval, salience_ranks, step_masks

__all__ = ["faithfulness", "faithfulness_table", "class_probabilities", "pool_faithfulness"]


def class_probabilities(model: keras.Model, x: np.ndarray, selector: np.ndarray,
                        batch_size: int = 64) -> np.ndarray:
    """The model's probability for each image's class: ``selector`` is (N, K) as from
    :func:`medtl.explain.cam._selector` (one sigmoid output: +1 the positive class, -1 the
    negative one, whose probability is 1 - p)."""
    out = np.concatenate([np.asarray(model(x[i:i + batch_size], training=False), np.float64)
                          for i in range(0, len(x), batch_size)])
    if out.shape[1] == 1:
        return np.where(selector[:, 0] > 0, out[:, 0], 1.0 - out[:, 0])
    return (out * selector).sum(axis=1)


def _curves(model: keras.Model, x: np.ndarray, blurred: np.ndarray, maps: np.ndarray,
            selector: np.ndarray, fractions: np.ndarray, seed: int, batch_size: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """Deletion and insertion curves (N, S) for ``maps``; one model call per film (2S images)."""
    s = len(fractions)
    dele, ins = np.empty((len(x), s)), np.empty((len(x), s))
    rng = np.random.default_rng(seed)
    for i in range(len(x)):
        masks = step_masks(salience_ranks(maps[i], rng), fractions)[..., None]
        batch = np.concatenate([np.where(masks, blurred[i], x[i]),  # deletion: top k% blurred
                                np.where(masks, x[i], blurred[i])]).astype(np.float32)
        p = class_probabilities(model, batch, np.repeat(selector[i:i + 1], 2 * s, axis=0),
                                batch_size=max(batch_size, 2 * s))
        dele[i], ins[i] = p[:s], p[s:]
    return dele, ins


def _verdict(dele: dict, ins: dict) -> str:
    better = (dele["high"] < 0.0) + (ins["low"] > 0.0)
    return ("more faithful than a random map", "better than a random map on one curve only",
            "no better than a random map")[2 - better]


def faithfulness(
    model: keras.Model,
    x: np.ndarray,
    methods: Sequence[str] | None = None,
    class_index: ClassIndex = None,
    steps: int = 10,
    seed: int = 0,
    blur: float = 0.1,
    groups: Sequence[Any] | None = None,
    n_boot: int = 1000,
    batch_size: int = 16,
    options: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Deletion and insertion AUCs per method and for random maps, with bootstrap intervals.

    Args:
        model: A medtl classifier (input (H, W, 1) in [0, 1]) or any functional image model.
        x: (N, H, W) or (N, H, W, C) films at the input size, float32 in [0, 1].
        methods: Names of :func:`medtl.registry.map_methods`; default all of them.
        class_index: The class to score, as for :func:`medtl.explain.cam.compute_cam` (binary
            default: the positive class; "predicted" is decided on the unaltered film).
        steps: Number of steps from 0 to 100% of the pixels (steps + 1 points per curve).
        seed: Seed of the random maps, the tie-breaking and the bootstrap.
        blur: Gaussian sigma of the blurred film, as a fraction of the longer image side.
        groups: Patient id per film, so the intervals resample patients; default films.
        n_boot: Bootstrap replicates.
        batch_size: Images per map batch (and per model call at least).
        options: Per-method keyword arguments for compute_cam, e.g.
            ``{"occlusion": {"patch": 0.1}, "layercam": {"target_layer": [...]}}``.

    Returns:
        ``{"n_films", "steps", "fractions", "blur", "methods": {name: {...}}, "random": {...}}``;
        each method has ``label``, ``grid`` (the map's own resolution), ``deletion`` and
        ``insertion`` (mean AUC intervals as dicts: point, low, high, ...), ``deletion_vs_random``
        and ``insertion_vs_random`` (paired per-film differences, method minus random: negative
        resp. positive is better), the mean curves, ``per_film`` AUCs, ``seconds``,
        ``maps_per_second`` and a one-line ``verdict``. ``random`` has the same AUC entries
        for pixel-wise random maps; ``random_by_grid`` ("16x16" -> the same) for random maps
        drawn on each method's grid and resized as its maps are. A method's ``random_grid``
        names the one its ``*_vs_random`` differences and verdict are taken against.

    Example:
        >>> res = faithfulness(model, x, ["gradcam"], steps=10, seed=0)
        >>> res["methods"]["gradcam"]["verdict"]
        'more faithful than a random map'
    """
    arr = np.asarray(x, np.float32)
    arr = arr[..., None] if arr.ndim == 3 else arr
    if arr.ndim != 4 or len(arr) == 0:
        raise ValueError(f"x of shape {np.shape(x)}: expected (N, H, W) or (N, H, W, C), N >= 1")
    if steps < 1:
        raise ValueError(f"steps={steps}: must be at least 1")
    methods = list(map_methods() if methods is None else methods)
    unknown = [m for m in methods if m not in map_methods()]
    if unknown:
        raise ValueError(f"methods {unknown}: unknown; choose from {', '.join(map_methods())}")
    options = dict(options or {})
    n, h, w, _ = arr.shape
    sigma = blur * max(h, w)
    blurred = np.stack([gaussian_filter(f, sigma=(sigma, sigma, 0), mode="nearest") for f in arr])
    fractions = np.linspace(0.0, 1.0, steps + 1)
    k = int(model.output_shape[-1])
    sel = _selector(class_index, n, k)
    if sel is None:  # the predicted class, decided once on the unaltered films
        out = np.asarray(model(arr, training=False))
        sel = (np.where(out >= 0.5, 1.0, -1.0) if k == 1 else np.eye(k)[out.argmax(axis=1)]).astype(np.float32)

    def summary(dele: np.ndarray, ins: np.ndarray) -> dict[str, Any]:
        da, ia = curve_auc(dele, fractions), curve_auc(ins, fractions)
        return {"deletion": mean_interval(da, groups, n_boot, seed=seed).to_dict(),
                "insertion": mean_interval(ia, groups, n_boot, seed=seed).to_dict(),
                "deletion_curve": dele.mean(axis=0).tolist(), "insertion_curve": ins.mean(axis=0).tolist(),
                "per_film": {"deletion": da.tolist(), "insertion": ia.tolist()}}

    def random_at(grid: tuple[int, int]) -> dict[str, Any]:
        # One seeded draw per grid, so methods on the same grid share their chance level.
        maps = np.random.default_rng([seed, *grid]).random((n, *grid))
        return summary(*_curves(model, arr, blurred, _resize(maps, (h, w)), sel, fractions, seed, batch_size))

    rand = summary(*_curves(model, arr, blurred, np.random.default_rng(seed).random((n, h, w)), sel,
                            fractions, seed, batch_size))
    result: dict[str, Any] = {"n_films": n, "steps": steps, "fractions": fractions.tolist(),
                              "blur": blur, "methods": {}, "random": rand, "random_by_grid": {}}
    for name in methods:
        opts = dict(options.get(name, {}))
        layer = opts.get("target_layer") if takes_target_layer(name) else None
        grid_opts = {k2: v for k2, v in opts.items() if name == "occlusion" and k2 in ("patch", "stride")}
        grid = tuple(int(g) for g in map_grid(model, name, layer, **grid_opts))
        key = _grid_key(grid)
        if key not in result["random_by_grid"]:
            result["random_by_grid"][key] = rand if grid == (h, w) else random_at(grid)
        start = time.perf_counter()
        maps = compute_cam(model, arr, method=name, class_index=[int(i) for i in _class_ids(sel)],
                           batch_size=batch_size, **opts)
        seconds = time.perf_counter() - start
        entry = summary(*_curves(model, arr, blurred, maps, sel, fractions, seed, batch_size))
        entry.update(label=method_label(name), grid=list(grid), random_grid=key, seconds=seconds,
                     maps_per_second=n / seconds if seconds > 0 else float("inf"))
        _compare(entry, result["random_by_grid"][key], groups, n_boot, seed)
        result["methods"][name] = entry
    return result


def _grid_key(grid: Sequence[int]) -> str:
    return "x".join(str(int(g)) for g in grid)


def _compare(entry: dict[str, Any], rand: dict[str, Any], groups: Sequence[Any] | None, n_boot: int,
             seed: int) -> None:
    """Add the paired differences against ``rand`` (the same films) and the verdict to ``entry``."""
    for curve in ("deletion", "insertion"):
        diff = np.subtract(entry["per_film"][curve], rand["per_film"][curve])
        entry[f"{curve}_vs_random"] = mean_interval(diff, groups, n_boot, seed=seed).to_dict()
    entry["verdict"] = _verdict(entry["deletion_vs_random"], entry["insertion_vs_random"])


def pool_faithfulness(parts: Sequence[dict[str, Any]], groups: Sequence[Any] | None = None,
                      n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """One :func:`faithfulness` result from several on disjoint films (e.g. one per fold model,
    each on the films it did not train on): the per-film AUCs are pooled and the intervals and
    verdicts recomputed. Methods missing from any part are left out.

    Args:
        parts: results of :func:`faithfulness` with the same ``steps``.
        groups: patient id per pooled film (parts in order), so intervals resample patients.
        n_boot, seed: as for :func:`faithfulness`.

    Example:
        >>> res = pool_faithfulness([faithfulness(m0, x0, ["gradcam"]), faithfulness(m1, x1, ["gradcam"])])
    """
    if not parts:
        raise ValueError("parts: expected at least one faithfulness result")
    if len({p["steps"] for p in parts}) > 1:
        raise ValueError("parts: all results must have the same number of steps")
    weights = np.array([p["n_films"] for p in parts], np.float64)

    def pooled(entries: list[dict]) -> dict[str, Any]:
        out: dict[str, Any] = {"per_film": {}}
        for c in ("deletion", "insertion"):
            per = np.concatenate([np.asarray(e["per_film"][c], np.float64) for e in entries])
            out[c] = mean_interval(per, groups, n_boot, seed=seed).to_dict()
            out[f"{c}_curve"] = (weights @ np.array([e[f"{c}_curve"] for e in entries]) / weights.sum()).tolist()
            out["per_film"][c] = per.tolist()
        return out

    rand = pooled([p["random"] for p in parts])
    # Results saved before random_by_grid existed compare with the pixel-wise random map.
    grids = {key for p in parts for key in p.get("random_by_grid", {})}
    by_grid = {key: pooled([p.get("random_by_grid", {}).get(key, p["random"]) for p in parts]) for key in grids}
    result: dict[str, Any] = {"n_films": int(weights.sum()), "steps": parts[0]["steps"],
                              "fractions": parts[0]["fractions"], "blur": parts[0]["blur"],
                              "methods": {}, "random": rand, "random_by_grid": by_grid}
    for name, first in parts[0]["methods"].items():
        if not all(name in p["methods"] for p in parts):
            continue
        entries = [p["methods"][name] for p in parts]
        entry = pooled(entries)
        seconds = float(sum(e["seconds"] for e in entries))
        key = first.get("random_grid")
        entry.update(label=first["label"], grid=first["grid"], random_grid=key, seconds=seconds,
                     maps_per_second=result["n_films"] / seconds if seconds > 0 else float("inf"))
        _compare(entry, by_grid.get(key, rand), groups, n_boot, seed)
        result["methods"][name] = entry
    return result


def _class_ids(selector: np.ndarray) -> np.ndarray:
    """Class indices from selector rows (one sigmoid output: +1 -> 1, -1 -> 0)."""
    return (selector[:, 0] > 0).astype(int) if selector.shape[1] == 1 else selector.argmax(axis=1)


def faithfulness_table(result: dict[str, Any]) -> list[dict[str, str]]:
    """Rows of the report's "which map to trust" table, best deletion AUC first.

    Each row: method (label), grid ("16x16"), deletion, insertion (mean AUC with its 95%
    interval), vs_random (the paired differences with the random map on the method's grid),
    verdict. Last rows give the random maps: one per grid the methods use, and pixel-wise.

    Example:
        >>> faithfulness_table(res)[0]["verdict"]
        'more faithful than a random map'
    """
    def fmt(iv: dict) -> str:
        return f"{iv['point']:.3f} ({iv['low']:.3f} to {iv['high']:.3f})"

    rows = []
    for name, e in sorted(result["methods"].items(), key=lambda kv: kv[1]["deletion"]["point"]):
        rows.append({"method": e["label"], "grid": "x".join(map(str, e["grid"])),
                     "deletion": fmt(e["deletion"]), "insertion": fmt(e["insertion"]),
                     "vs_random": f"deletion {e['deletion_vs_random']['point']:+.3f}, "
                                  f"insertion {e['insertion_vs_random']['point']:+.3f}",
                     "verdict": e["verdict"]})
    grids = result.get("random_by_grid") or {}
    randoms = [(f"Random map on a {key} grid", key, r) for key, r in grids.items() if r is not result["random"]
               and r.get("per_film") != result["random"].get("per_film")]
    for label, key, r in [*randoms, ("Random map (pixels)" if randoms else "Random map", "", result["random"])]:
        rows.append({"method": label, "grid": key, "deletion": fmt(r["deletion"]),
                     "insertion": fmt(r["insertion"]), "vs_random": "", "verdict": "chance level"})
    return rows
