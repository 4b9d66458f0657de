"""``medtl localise``: do a run's heat maps point at annotated findings?

For each method, maps of the annotated films are computed at each film's own resolution
(:func:`medtl.explain.files.maps_for_files`) and scored with :mod:`medtl.stats.localisation`
(pointing game, heat in annotation, IoU and IoBB hit rates), beside three chance baselines
(flat map, film centre, leave-one-film-out mean-annotation prior), each with a patient-bootstrap
interval. Only films the run calls positive (binary: the positive class at the run's threshold)
and that have an annotation are scored: a map of a film the model calls normal explains no
finding. The count of annotated films not called positive is reported beside.

Writes ``localisation.json`` (settings, counts, intervals, verdicts in words) and
``localisation.csv`` (one row per scored film and map, methods and baselines; it names the
films, so it stays local, like ``explanations.csv``).

Example:
    >>> result = localise_run("runs/demo/cv-1a2b3c4d5e", "sample_data/boxes.csv", "loc/")
    >>> print(format_localisation(result))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import yaml

from medtl.data.annotations import annotations_digest, read_annotations
from medtl.explain.files import maps_for_files
from medtl.io.atomic import write_json
from medtl.registry import DEFAULT_METHOD, method_label
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
        run_or_model: a CV run, a training run or fold folder, or a ``.keras`` file (binary task).
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
        (intervals per measure), ``verdicts`` (one sentence per method).

    Raises:
        ValueError: the run is not binary, a setting is out of range, or no annotations are
            given and the run's config sets no ``data.annotations``.

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
    files = ann.files()
    occlusion = {"patch": report.get("occlusion_patch"), "stride": report.get("occlusion_stride")}

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
    if scores is not None and "score" not in scores.columns:
        raise ValueError(f"{run_or_model}: medtl localise scores binary runs only (this run has score columns "
                         f"{[c for c in scores.columns if c.startswith('score')]}); use a binary run")
    positive = {}
    if scores is not None:
        # Binary maps show evidence for the positive class; a film is called positive when the
        # run's decision (at its threshold) is that class.
        positive = {p: d == first.classes.get(p) for p, d in zip(scores["path"].astype(str),
                                                                  scores["prediction"].astype(str))}
    readable = [f for f in files if f in first.films]
    scored = [f for f in readable if positive.get(f)]

    regions = {f: ann.regions(f, first.films[f].shape) for f in scored}
    unions = [np.logical_or.reduce(regions[f]) for f in scored]
    priors = loc.prior_maps(unions)
    groups, group_source = _patients(scored, ann.patients, raw_cfg)
    kw = {"hot_fraction": hot_fraction, "iou_hit": iou_hit, "iobb_hit": iobb_hit}
    rows = []
    for i, f in enumerate(scored):
        shape = first.films[f].shape
        candidates = {**{m: maps[m][f] for m in methods},
                      "flat": np.ones(shape), "centre": loc.centre_map(shape), "prior": priors[i]}
        for name, m in candidates.items():
            rows.append({"file": f, "patient": groups[i], "map": name,
                         "kind": "baseline" if name in loc.BASELINES else "method",
                         **loc.score_film(m, regions[f], **kw)})
    table = pd.DataFrame(rows, columns=["file", "patient", "map", "kind", "pointing", "heat_in_box", "iou", "iobb",
                                        "iou_hit", "iobb_hit"])
    per_map = {name: {k: table.loc[table["map"] == name, k].to_numpy() for k in loc.MEASURES}
               for name in [*methods, *loc.BASELINES]}
    summary = loc.summarise(per_map, groups=groups, labels={m: method_label(used[m]) for m in methods},
                            n_boot=n_boot, seed=seed)
    if not scored:
        summary["verdicts"] = {m: f"{method_label(used[m])}: no film to score (no annotated film is called "
                                  "positive)" for m in methods}
    result = {
        "counts": {"annotated": len(files), "unreadable": len(files) - len(readable), "scored": len(scored),
                   "annotated_not_called_positive": len(readable) - len(scored),
                   "patients": len(set(groups))},
        "settings": {"methods": {m: used[m] for m in methods}, "annotations_sha256": annotations_digest(annotations),
                     "hot_fraction": hot_fraction, "iou_hit": iou_hit,
                     "iobb_hit": iobb_hit, "n_boot": n_boot, "seed": seed, "alpha": 0.05,
                     "interval": "patient bootstrap, percentile", "patients_from": group_source,
                     "rule": "not better than chance when the interval's lower end <= the best baseline's value"},
        **summary,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / LOCALISATION_CSV, index=False)
    write_json(out / LOCALISATION_JSON, result)
    return result


def format_localisation(result: dict[str, Any]) -> str:
    """The console text of ``medtl localise``: counts, a table of intervals, and the verdicts.

    Example:
        >>> print(format_localisation(result).splitlines()[0])
        scored 18 annotated films called positive (3 annotated films not called positive), 12 patients
    """
    c = result["counts"]
    lines = [f"scored {c['scored']} annotated films called positive ({c['annotated_not_called_positive']} "
             f"annotated films not called positive), {c['patients']} patients"]
    if c.get("unreadable"):
        lines.append(f"{c['unreadable']} annotated film(s) unreadable, not scored")
    heads = [loc.MEASURE_LABELS[k] for k in loc.MEASURES]
    lines.append(f"{'map':<30}" + "".join(f"{h:>24}" for h in heads))

    def cell(d: dict | None) -> str:
        if not d or d.get("point") is None:
            return f"{'-':>24}"
        return f"{d['point']:.3f} [{d['low']:.3f}, {d['high']:.3f}]".rjust(24)

    for name, per in result.get("methods", {}).items():
        label = method_label(result["settings"]["methods"].get(name, name))
        lines.append(f"{label:<30}" + "".join(cell(per.get(k)) for k in loc.MEASURES))
    for name, per in result.get("baselines", {}).items():
        lines.append(f"{'chance: ' + loc.BASELINE_LABELS[name]:<30}" + "".join(cell(per.get(k)) for k in loc.MEASURES))
    lines += list(result.get("verdicts", {}).values())
    return "\n".join(lines)
