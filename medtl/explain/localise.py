"""``medtl localise``: do a run's heat maps point at annotated findings?

For each method, maps of the annotated films are computed at each film's own resolution
(:func:`medtl.explain.files.maps_for_files`) and scored with :mod:`medtl.stats.localisation`
(pointing game, heat in annotation, IoU and IoBB hit rates), beside three chance baselines
(flat map, film centre, leave-one-film-out mean-annotation prior), each with a patient-bootstrap
interval. Only films the run calls positive (binary: the positive class at the run's threshold)
and that have an annotation are scored: a map of a film the model calls normal explains no
finding. The count of annotated films not called positive is reported beside.

A multiclass or multilabel run scores (film, class) pairs: each annotation row's ``label``
names the class whose map its box is scored against, and a pair counts when the run calls that
class (:meth:`~medtl.run.predictor.Predictor.decide`: multiclass the arg-max class, multilabel
the label's score at or above its threshold); a film with boxes of several labels is scored once
per labelled class. Figures are given per class (over its films) and overall (over all pairs),
the mean-annotation prior learnt from the other films of the same class.

Writes ``localisation.json`` (settings, counts, intervals, verdicts in words; per class under
``classes`` for a non-binary run) and ``localisation.csv`` (one row per scored film and map,
methods and baselines, and a ``class`` column for a non-binary run; it names the films, so it
stays local, like ``explanations.csv``).

Example:
    >>> result = localise_run("runs/demo/cv-1a2b3c4d5e", "sample_data/boxes.csv", "loc/")
    >>> print(format_localisation(result))
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import yaml

from medtl.data.annotations import annotations_digest, read_annotations
from medtl.explain.files import maps_for_files
from medtl.io.atomic import write_json
from medtl.registry import DEFAULT_METHOD, method_label
from medtl.run.files import score_columns
from medtl.run.predictor import Predictor
from medtl.stats import localisation as loc

__all__ = ["localise_run", "format_localisation", "LOCALISATION_JSON", "LOCALISATION_CSV"]

LOCALISATION_JSON = "localisation.json"
LOCALISATION_CSV = "localisation.csv"


def _run_config(run_or_model: str | Path) -> dict:
    """The run's saved config as a plain dict ({} for a bare .keras file without one)."""
    p = Path(run_or_model)
    folder = p if p.is_dir() else p.parent
    for cand in (folder / "config.yaml", folder.parent / "config.yaml"):
        if cand.is_file():
            return yaml.safe_load(cand.read_text()) or {}
    return {}


def _patients(files: Sequence[str], given: dict[str, str], raw_cfg: dict) -> tuple[list[str], str]:
    """A patient id per film: the annotations' patient_id, else the run's manifest, else the
    film itself; and which source served (said in localisation.json)."""
    if all(f in given for f in files):
        return [given[f] for f in files], "annotations patient_id column"
    found: dict[str, str] = {}
    if raw_cfg:
        # why: the config and manifest readers (pandas, scipy) are needed only for this lookup
        from medtl.config import config_from_dict
        from medtl.data.manifest import load_manifest  # why: as above

        try:
            m = load_manifest(config_from_dict(raw_cfg), check_files=False, labels=False)
            found = {str(Path(p).resolve()): str(g) for p, g in zip(m.df["path"], m.df["patient_id"])}
        except Exception:  # noqa: BLE001 - a moved manifest only loses the grouping, said below
            found = {}
    if all(f in given or f in found for f in files):
        return [given.get(f) or found[f] for f in files], "the run's manifest"
    return [given.get(f) or found.get(f) or f for f in files], (
        "none for some films: each such film counted as its own patient (add a patient_id column to the "
        "annotations CSV for patient-grouped intervals)")


def localise_run(
    run_or_model: str | Path,
    annotations: str | Path | None,
    out_dir: str | Path,
    methods: Sequence[str] | None = None,
    hot_fraction: float = loc.HOT_FRACTION,
    iou_hit: float = loc.IOU_HIT,
    iobb_hit: float = loc.IOBB_HIT,
    n_boot: int = 1000,
    seed: int = 0,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Score a run's heat maps against annotated findings and write the results to ``out_dir``.

    Args:
        run_or_model: a CV run, a training run or fold folder, or a ``.keras`` file (binary,
            multiclass or multilabel; a non-binary run needs the annotations' ``label`` column).
        annotations: boxes or masks CSV (:mod:`medtl.data.annotations`); None: the run's
            ``data.annotations``.
        out_dir: folder for ``localisation.json`` and ``localisation.csv`` (created).
        methods: map methods (default: the run's ``report.cam``, and ``report.compare`` if set).
        hot_fraction: hot region threshold for IoU / IoBB, a fraction of the map's maximum.
        iou_hit, iobb_hit: IoU / IoBB above these count as hits.
        n_boot: bootstrap replicates; seed: their seed.
        batch_size: images per model call.

    Returns:
        What ``localisation.json`` holds: ``counts``, ``settings``, ``methods`` and ``baselines``
        (intervals per measure), ``verdicts`` (one sentence per method); a multiclass or
        multilabel run's are over all scored (film, class) pairs, and ``classes`` holds the same
        four per class.

    Raises:
        ValueError: a setting is out of range; no annotations are given and the run's config
            sets no ``data.annotations``; a non-binary run's annotation row has no ``label`` or
            one that is not a class of the run.

    Example:
        >>> r = localise_run("runs/demo/20260101-120000", "boxes.csv", "loc/", methods=["gradcam", "occlusion"])
        >>> r["methods"]["gradcam"]["pointing"]["better_than_chance"]
        True
    """
    for name, v in (("iou_hit", iou_hit), ("iobb_hit", iobb_hit)):
        if not 0.0 <= v < 1.0:
            raise ValueError(f"{name}: invalid value {v!r}; expected 0 <= x < 1 (IoU 0.3, IoBB 0.1 are usual)")
    if not 0.0 < hot_fraction <= 1.0:
        raise ValueError(f"hot_fraction: invalid value {hot_fraction!r}; expected 0 < f <= 1 (0.5 is usual)")
    raw_cfg = _run_config(run_or_model)
    if annotations is None:
        annotations = (raw_cfg.get("data") or {}).get("annotations")
        if not annotations:
            raise ValueError(f"{run_or_model}: no annotations given and the run's config sets no data.annotations; "
                             "pass a CSV of boxes or masks")
    ann = read_annotations(annotations)
    report = raw_cfg.get("report") or {}
    if not methods:
        methods = [report.get("cam") or DEFAULT_METHOD] + ([report["compare"]] if report.get("compare") else [])
    methods = list(dict.fromkeys(methods))
    with warnings.catch_warnings():
        # The task, classes and decision rule only; maps_for_files' own predictor (the same
        # arguments) gives any warning about the run once.
        warnings.simplefilter("ignore")
        predictor = Predictor(run_or_model)
    common = {"ann": ann, "methods": methods, "raw_cfg": raw_cfg, "batch_size": batch_size,
              "kw": {"hot_fraction": hot_fraction, "iou_hit": iou_hit, "iobb_hit": iobb_hit},
              "occlusion": {"patch": report.get("occlusion_patch"), "stride": report.get("occlusion_stride")},
              "n_boot": n_boot, "seed": seed}
    if predictor.task == "binary":
        table, counts, summary, used, group_source = _binary(run_or_model, **common)
    else:
        table, counts, summary, used, group_source = _per_class(run_or_model, predictor, **common)
    settings = {"methods": {m: used[m] for m in methods}, "annotations_sha256": annotations_digest(annotations),
                "hot_fraction": hot_fraction, "iou_hit": iou_hit,
                "iobb_hit": iobb_hit, "n_boot": n_boot, "seed": seed, "alpha": 0.05,
                "interval": "patient bootstrap, percentile", "patients_from": group_source,
                "rule": "not better than chance when the interval's lower end <= the best baseline's value"}
    if predictor.task != "binary":
        settings.update({"task": predictor.task, "classes": list(predictor.classes),
                         "called": ("the run's arg-max class is the label" if predictor.task == "multiclass" else
                                    "the label's score is at or above its threshold"),
                         "prior": "leave-one-film-out over the scored films of the same class"})
    result = {"counts": counts, "settings": settings, **summary}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / LOCALISATION_CSV, index=False)
    write_json(out / LOCALISATION_JSON, result)
    return result


_COLUMNS = ["file", "patient", "map", "kind", "pointing", "heat_in_box", "iou", "iobb", "iou_hit", "iobb_hit"]


def _rows(keys: Sequence[Any], films: Sequence[str], shapes: Sequence[tuple[int, int]],
          regions: Sequence[list[np.ndarray]], priors: Sequence[np.ndarray], groups: Sequence[str],
          maps: dict[str, dict[Any, np.ndarray]], methods: Sequence[str], kw: dict[str, float],
          cls: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The per-film table rows: every method's map and every baseline of each scored item."""
    rows = []
    for i, key in enumerate(keys):
        shape = shapes[i]
        candidates = {**{m: maps[m][key] for m in methods},
                      "flat": np.ones(shape), "centre": loc.centre_map(shape), "prior": priors[i]}
        extra = {} if cls is None else {"class": cls[i]}
        for name, m in candidates.items():
            rows.append({"file": films[i], "patient": groups[i], **extra, "map": name,
                         "kind": "baseline" if name in loc.BASELINES else "method",
                         **loc.score_film(m, regions[i], **kw)})
    return rows


def _summarise(table: pd.DataFrame, methods: Sequence[str], groups: Sequence[str], labels: dict[str, str],
               empty: str, n_boot: int, seed: int) -> dict[str, Any]:
    """:func:`medtl.stats.localisation.summarise` of a table's rows (groups: one per scored item)."""
    per_map = {name: {k: table.loc[table["map"] == name, k].to_numpy() for k in loc.MEASURES}
               for name in [*methods, *loc.BASELINES]}
    summary = loc.summarise(per_map, groups=list(groups), labels=labels, n_boot=n_boot, seed=seed)
    if table.empty:
        summary["verdicts"] = {m: f"{labels[m]}: no film to score ({empty})" for m in methods}
    return summary


def _binary(run_or_model: str | Path, ann: Any, methods: list[str], raw_cfg: dict, batch_size: int,
            kw: dict[str, float], occlusion: dict, n_boot: int, seed: int
            ) -> tuple[pd.DataFrame, dict, dict, dict[str, str], str]:
    """A binary run: the annotated films the run calls positive, every row of a film its finding
    (``label`` is not read)."""
    files = ann.files()
    maps: dict[str, dict[str, np.ndarray]] = {}
    used: dict[str, str] = {}
    first = None
    for method in methods:
        fm = maps_for_files(run_or_model, files, method=method, batch_size=batch_size,
                            **(occlusion if method == "occlusion" else {}))
        first = first or fm
        maps[method] = fm.maps
        used[method] = fm.method
    assert first is not None
    scores = first.scores
    positive = {}
    if scores is not None:
        # Binary maps show evidence for the positive class; a film is called positive when the
        # run's decision (at its threshold) is that class.
        positive = {p: d == first.classes.get(p) for p, d in zip(scores["path"].astype(str),
                                                                  scores["prediction"].astype(str))}
    readable = [f for f in files if f in first.films]
    scored = [f for f in readable if positive.get(f)]

    regions = [ann.regions(f, first.films[f].shape) for f in scored]
    priors = loc.prior_maps([np.logical_or.reduce(r) for r in regions])
    groups, group_source = _patients(scored, ann.patients, raw_cfg)
    rows = _rows(scored, scored, [first.films[f].shape for f in scored], regions, priors, groups, maps, methods, kw)
    table = pd.DataFrame(rows, columns=_COLUMNS)
    labels = {m: method_label(used[m]) for m in methods}
    summary = _summarise(table, methods, groups, labels, "no annotated film is called positive", n_boot, seed)
    counts = {"annotated": len(files), "unreadable": len(files) - len(readable), "scored": len(scored),
              "annotated_not_called_positive": len(readable) - len(scored), "patients": len(set(groups))}
    return table, counts, summary, used, group_source


def _labels(ann: Any, run_or_model: str | Path, task: str, classes: Sequence[str]) -> dict[str, list[str]]:
    """Each annotated film's labelled classes (CSV order), checked against the run's classes."""
    unlabelled = [row.where for f in ann.files() for row in ann.rows[f] if not row.label]
    if unlabelled:
        raise ValueError(f"{ann.source}: {len(unlabelled)} annotation row(s) have no label (first: {unlabelled[0]}), "
                         f"but {run_or_model} is a {task} run: add a label column naming the class of each box "
                         f"(one of {', '.join(classes)})")
    for f in ann.files():
        for row in ann.rows[f]:
            if row.label not in classes:
                raise ValueError(f"{row.where}, column label: {row.label!r} is not a class of the run "
                                 f"{run_or_model}; its classes are {', '.join(classes)}")
    return {f: ann.labels(f) for f in ann.files()}


def _per_class(run_or_model: str | Path, predictor: Predictor, ann: Any, methods: list[str], raw_cfg: dict,
               batch_size: int, kw: dict[str, float], occlusion: dict, n_boot: int, seed: int
               ) -> tuple[pd.DataFrame, dict, dict, dict[str, str], str]:
    """A multiclass or multilabel run: (film, class) pairs from the ``label`` column, each scored
    against that class's map when the run calls that class; figures per class and overall."""
    classes = list(predictor.classes)
    labelled = _labels(ann, run_or_model, predictor.task, classes)
    files = ann.files()
    by_class = {c: [f for f in files if c in labelled[f]] for c in classes}
    by_class = {c: fs for c, fs in by_class.items() if fs}
    cols = score_columns(predictor.task, classes)
    maps: dict[str, dict[tuple[str, str], np.ndarray]] = {m: {} for m in methods}
    used: dict[str, str] = {}
    films: dict[str, np.ndarray] = {}
    called: dict[tuple[str, str], bool] = {}
    for c, fs in by_class.items():
        first = None
        for method in methods:
            # One class per call: every film of this call is mapped for class c.
            fm = maps_for_files(run_or_model, fs, method=method, batch_size=batch_size, class_name=c,
                                **(occlusion if method == "occlusion" else {}))
            first = first or fm
            maps[method].update({(f, c): m for f, m in fm.maps.items()})
            used[method] = fm.method
        assert first is not None
        films.update(first.films)
        if first.scores is not None:
            ok = first.scores[first.scores["error"].fillna("") == ""]
            # The predictor's own decision rule, so "called" means what medtl predict says.
            decided = predictor.decide(ok[cols].to_numpy(dtype=np.float64))
            k = classes.index(c)
            hit = decided == k if predictor.task == "multiclass" else decided[:, k] == 1
            called.update({(str(p), c): bool(h) for p, h in zip(ok["path"], hit)})

    pairs = [(f, c) for f in files for c in labelled[f]]
    readable = [p for p in pairs if p[0] in films]
    scored = [p for p in readable if called.get(p)]
    regions = {p: ann.regions(p[0], films[p[0]].shape, label=p[1]) for p in scored}
    priors: dict[tuple[str, str], np.ndarray] = {}
    for c in by_class:  # where findings of this class lie, learnt from its other films
        own = [p for p in scored if p[1] == c]
        priors.update(zip(own, loc.prior_maps([np.logical_or.reduce(regions[p]) for p in own])))
    groups, group_source = _patients([f for f, _ in scored], ann.patients, raw_cfg)
    rows = _rows(scored, [f for f, _ in scored], [films[f].shape for f, _ in scored], [regions[p] for p in scored],
                 [priors[p] for p in scored], groups, maps, methods, kw, cls=[c for _, c in scored])
    table = pd.DataFrame(rows, columns=[*_COLUMNS[:2], "class", *_COLUMNS[2:]])
    label = {m: method_label(used[m]) for m in methods}

    def counts(of: list[tuple[str, str]], films_of: list[str]) -> dict[str, int]:
        read = [p for p in of if p[0] in films]
        done = set(p for p in read if called.get(p))
        return {"annotated": len(films_of), "unreadable": len([f for f in films_of if f not in films]),
                "scored": len(done), "annotated_not_called_positive": len(read) - len(done),
                "patients": len({g for g, p in zip(groups, scored) if p in done})}

    per_class = {}
    for c, fs in by_class.items():
        mine = [i for i, p in enumerate(scored) if p[1] == c]
        sub = table[table["class"] == c].reset_index(drop=True)
        summary = _summarise(sub, methods, [groups[i] for i in mine], {m: f"{label[m]} ({c})" for m in methods},
                             f"no annotated film is called {c}", n_boot, seed)
        per_class[c] = {"counts": counts([p for p in pairs if p[1] == c], fs), **summary}
    overall = _summarise(table, methods, groups, {m: f"{label[m]} (all classes)" for m in methods},
                         "the run calls no annotated film's labelled class", n_boot, seed)
    total = {**counts(pairs, files), "pairs": len(pairs), "scored_films": len({f for f, _ in scored})}
    return table, total, {**overall, "classes": per_class}, used, group_source


def format_localisation(result: dict[str, Any]) -> str:
    """The console text of ``medtl localise``: counts, a table of intervals, and the verdicts
    (a multiclass or multilabel run: overall, then per class).

    Example:
        >>> print(format_localisation(result).splitlines()[0])
        scored 18 annotated films called positive (3 annotated films not called positive), 12 patients
    """
    c = result["counts"]
    if "classes" in result:
        lines = [f"scored {c['scored']} (film, class) pairs the run calls, of {c.get('pairs', '?')} annotated "
                 f"({c['annotated_not_called_positive']} not called), {c.get('scored_films', '?')} films, "
                 f"{c['patients']} patients"]
    else:
        lines = [f"scored {c['scored']} annotated films called positive ({c['annotated_not_called_positive']} "
                 f"annotated films not called positive), {c['patients']} patients"]
    if c.get("unreadable"):
        lines.append(f"{c['unreadable']} annotated film(s) unreadable, not scored")
    lines += _table(result, "all classes" if "classes" in result else "map")
    for name, per in (result.get("classes") or {}).items():
        k = per["counts"]
        lines += ["", f"class {name}: scored {k['scored']} annotated films called {name} "
                      f"({k['annotated_not_called_positive']} not called), {k['patients']} patients"]
        lines += _table({**per, "settings": result["settings"]}, f"class {name}")
    return "\n".join(lines)


def _table(result: dict[str, Any], title: str) -> list[str]:
    """A table of intervals per map and measure, then the verdicts."""
    heads = [loc.MEASURE_LABELS[k] for k in loc.MEASURES]
    lines = [f"{title:<30}" + "".join(f"{h:>24}" for h in heads)]

    def cell(d: dict | None) -> str:
        if not d or d.get("point") is None:
            return f"{'-':>24}"
        return f"{d['point']:.3f} [{d['low']:.3f}, {d['high']:.3f}]".rjust(24)

    for name, per in result.get("methods", {}).items():
        label = method_label(result["settings"]["methods"].get(name, name))
        lines.append(f"{label:<30}" + "".join(cell(per.get(k)) for k in loc.MEASURES))
    for name, per in result.get("baselines", {}).items():
        lines.append(f"{'chance: ' + loc.BASELINE_LABELS[name]:<30}" + "".join(cell(per.get(k)) for k in loc.MEASURES))
    return lines + list(result.get("verdicts", {}).values())
