"""The model card of a run: ``RUN/model_card.md`` and ``RUN/model_card.json``, and a section of
the report, filled from what medtl already knows about the run.

Intended use (``report.intended_use``, default research use only), data (images, patients,
classes, sources, input size), splits and the leakage check, training recipe, metrics with
intervals, operating point, calibration, and the items of the CLAIM checklist (Mongan et al.,
Radiology: AI 2020) the run can fill; the others say "to be completed by the authors".

Everything comes from :class:`~medtl.report.data.ReportData` (already de-identified) plus the
run's split tables, which are read for counts only; the card is checked against the run's
identifying strings and its de-identification index before it is written, as the report is.

Example:
    >>> from medtl.report.model_card import write_model_card
    >>> write_model_card("runs/demo/cv-1a2b3c4d5e")
    (PosixPath('runs/demo/cv-1a2b3c4d5e/model_card.md'), PosixPath('runs/demo/cv-1a2b3c4d5e/model_card.json'))
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from medtl.config import load_resolved
from medtl.evaluate.cv_folder import has_patient_ids
from medtl.io.atomic import write_atomic
from medtl.report.data import ReportData, collect_report_data
from medtl.report.deid import deid_check, find_in_text
from medtl.run.layout import CONFIG_FILE, FOLDS_FILE, SPLIT_FILE, fold_dir, is_cv_run

__all__ = ["MODEL_CARD_MD", "MODEL_CARD_JSON", "TODO", "DEFAULT_USE", "build_model_card", "render_markdown",
           "write_model_card"]

MODEL_CARD_MD = "model_card.md"
MODEL_CARD_JSON = "model_card.json"
TODO = "to be completed by the authors"
DEFAULT_USE = ("Research use only: not a medical device, not validated for clinical decisions, and not to "
               "be used on patients' care.")


class ModelCardPHIError(RuntimeError):
    """The model card would contain a patient's identifying string; it was not written."""


def _leakage(run: Path) -> dict[str, Any]:
    """Whether any patient is in two folds (folds.csv) or in two roles of one fold (split.csv).

    Reads patient columns only, for counts: no value leaves this function.
    """
    if not is_cv_run(run):
        return {"checked": False, "passed": None,
                "note": "a single training run keeps no split table of its training films; run medtl cv"}
    folds = pd.read_csv(run / FOLDS_FILE, dtype={"patient": str})
    across = int((folds.groupby("patient")["fold"].nunique() > 1).sum())
    within = 0
    n_splits = 0
    for f in sorted(folds["fold"].unique()):
        path = fold_dir(run, int(f)) / SPLIT_FILE
        if path.is_file():
            split = pd.read_csv(path, dtype={"patient": str})
            within += int((split.groupby("patient")["role"].nunique() > 1).sum())
            n_splits += 1
    passed = across == 0 and within == 0
    return {"checked": True, "passed": passed, "patients_in_two_folds": across,
            "patients_in_two_roles_of_a_fold": within, "fold_splits_checked": n_splits,
            "note": "no patient in two folds, nor in two of train / validation / test within a fold"
            if passed else "patients are shared between folds or roles: the estimate is optimistic"}


def _localisation(data: ReportData) -> Any:
    """The report's localisation figures (pointing game, heat in box per map method, with
    intervals and the chance baselines), or a to-do when the run has no annotations scored."""
    loc = getattr(data, "localisation", None)
    if not loc:
        return TODO + " (medtl localise scores the maps where annotations exist)"
    keep = ("pointing", "heat_in_box")

    def figures(part: dict) -> dict[str, Any]:
        return {"counts": part.get("counts"),
                "methods": {m: {k: per.get(k) for k in keep} for m, per in (part.get("methods") or {}).items()},
                "baselines": {b: {k: per.get(k) for k in keep} for b, per in (part.get("baselines") or {}).items()}}

    out = figures(loc)
    if loc.get("classes"):  # a multiclass / multilabel run: the figures over all pairs, then per class
        out["classes"] = {c: figures(part) for c, part in loc["classes"].items()}
    return out


def _metrics(data: ReportData) -> list[dict[str, Any]]:
    """The first column of the report's metrics table (pooled, or validation), with intervals."""
    out = []
    for label, cells in data.metrics.rows:
        if not cells or cells[0].value is None or cells[0].digits == 0:  # counts: in the data section
            continue
        c = cells[0]
        row = {"metric": label, "value": round(float(c.value), 4)}
        if c.low is not None and c.high is not None:
            row["ci95"] = [round(float(c.low), 4), round(float(c.high), 4)]
        out.append(row)
    return out


def _claim(card: dict[str, Any], cfg: Any, cv: bool) -> list[dict[str, str]]:
    """CLAIM items the run can fill (filled) and the others (to be completed by the authors)."""
    d, s = card["data"], card["splits"]
    recipe = card["training"]

    def item(no: str, topic: str, text: str | None) -> dict[str, str]:
        return {"item": no, "topic": topic, "status": "filled" if text else TODO, "text": text or TODO}

    metrics = ", ".join(m["metric"] for m in card["performance"]["metrics"])
    return [
        item("1-2", "Title, abstract, introduction", None),
        item("4", "Study design (retrospective / prospective)", None),
        item("7", "Data sources", f"{d['images']} images of {d['patients']} patients from {d['source']}"),
        item("8", "Eligibility (inclusion, exclusion)", None),
        item("9", "Data pre-processing",
             f"decoded to [0, 1] grey (window: {d['preprocessing'].get('window')}), resized to "
             f"{d['input_size'][0]} x {d['input_size'][1]}"
             f"{' with letterbox padding' if d['preprocessing'].get('keep_aspect') else ''}; augmentation preset "
             f"{recipe['augmentation']}"),
        item("12-13", "Ground truth: definition and source", None),
        item("14", "Annotation procedure and annotators", None),
        item("18", "Patient-level partitions", s["description"]),
        item("19", "Intended sample sizes per partition", s["sizes"]),
        item("20", "Leakage between partitions",
             s["leakage"]["note"] if s["leakage"]["checked"] else None),
        item("22", "Model architecture", f"{recipe['backbone']} with a {card['task']} head"),
        item("23", "Software and versions", ", ".join(f"{k} {v}" for k, v in card["versions"].items())),
        item("24", "Initialisation of parameters", f"backbone weights: {recipe['weights']}; seed {recipe['seed']}"),
        item("25", "Training details", "; ".join(
            f"stage {st['stage']}: {st['trainable']}, {st['epochs']} epochs, {st['optimizer']} lr {st['lr']}"
            for st in recipe["stages"])),
        item("26", "Model selection and ensembling", card["model"]),
        item("28", "Performance metrics", metrics or None),
        item("29", "Statistical measures of significance and uncertainty",
             f"patient-bootstrap 95% intervals ({cfg.evaluate.bootstrap} replicates)"
             if card["performance"]["metrics"] else None),
        item("30", "Robustness / sensitivity analysis", None),
        item("31", "Explainability methods", f"{cfg.report.cam} heat maps in the report"),
        item("32", "Internal testing", f"{'patient' if s['patient_grouped'] else 'image'}-grouped "
             "cross-validation, held-out folds" if cv else
             "validation split of one training run (optimistic: it also chose the checkpoint)"),
        item("32", "External testing", None),
        item("33-35", "Flow of patients, demographics, results", None),
        item("36", "Failure analysis", "gallery of the most confident false positives and negatives"
             if card["performance"]["metrics"] else None),
        item("37-42", "Discussion, limitations, registration, protocol, funding", None),
    ]


def build_model_card(run_dir: str | Path, data: ReportData | None = None) -> dict[str, Any]:
    """The model card of a run as a JSON-ready dict.

    Args:
        run_dir: a merged CV run or a training run folder.
        data: the run's report data, when already collected (the report passes it).

    Example:
        >>> card = build_model_card("runs/demo/cv-1a2b3c4d5e")
        >>> card["intended_use"]["text"][:17]
        'Research use only'
    """
    run = Path(run_dir)
    data = data if data is not None else collect_report_data(run, compute_cams=False)
    cfg = load_resolved(run / CONFIG_FILE)
    cv = is_cv_run(run)
    leakage = _leakage(run)
    n_folds = len(data.fold_table)
    grouped = has_patient_ids(cfg)
    if cv:
        split_text = (f"{n_folds}-fold cross-validation, stratified, grouped by {'patient' if grouped else 'image'}; "
                      "in each fold a validation split of the training patients chose the checkpoint, the "
                      "threshold and the calibrator")
        sizes = "; ".join(f"{r['fold']}: {r['train']} train, {r['val']} validation, {r['test']} test images"
                          for r in data.fold_table)
        model = (f"ensemble: the mean of the {n_folds} fold models' calibrated scores"
                 if cfg.evaluate.final_model == "ensemble" else "one model retrained on all images")
    else:
        split_text = f"one training run; validation fraction {cfg.data.val_fraction}, grouped by " \
                     f"{'patient' if grouped else 'image'}"
        sizes = f"{data.n_images} validation images"
        model = f"the best checkpoint by {cfg.train.monitor}"
    manifest = Path(str(cfg.data.manifest)).name if cfg.data.manifest else ""
    use = cfg.report.intended_use if getattr(cfg.report, "intended_use", None) else DEFAULT_USE
    card: dict[str, Any] = {
        "format": 1,
        "name": cfg.name,
        "kind": data.kind,
        "task": data.task,
        "classes": list(data.classes),
        "intended_use": {"text": use, "from": "report.intended_use" if use != DEFAULT_USE else "default"},
        "data": {
            "images": data.n_images, "patients": data.n_patients,
            "per_class": [{k: r[k] for k in ("class", "images", "patients")} for r in data.data_table],
            "source": f"the manifest {manifest}" if manifest else "the run's manifest",
            "input_size": [int(v) for v in cfg.data.image_size],
            "preprocessing": {"keep_aspect": cfg.data.keep_aspect, "window": cfg.data.window,
                              "frame": cfg.data.frame},
            "acquisition_image_sizes": TODO,
        },
        "splits": {"description": split_text, "sizes": sizes, "patient_grouped": grouped, "leakage": leakage},
        "training": {"backbone": data.backbone, "weights": data.weights, "seed": data.seed,
                     "stages": data.stages,
                     "loss": f"{cfg.train.loss.name}, class weight {cfg.train.loss.class_weight}",
                     "augmentation": cfg.augment.preset, "monitor": cfg.train.monitor},
        "model": model,
        "performance": {"columns": data.metrics.columns[:1], "metrics": _metrics(data),
                        "note": "pooled over the held-out folds, patient-bootstrap 95% intervals" if cv else
                        "on the validation split that chose the checkpoint (optimistic)"},
        "operating_point": data.threshold_text,
        "calibration": data.calibration,
        "shift": TODO + " (medtl evaluate on an external set measures it)",
        "localisation": _localisation(data),
        "limitations": [
            "Estimated on films like the training films only; performance on other scanners, sites, "
            "populations or prevalences is unknown until evaluated externally.",
            "Labels are taken as given in the manifest; their accuracy bounds the model's.",
            "Heat maps show what raised the score, not a diagnosis or a localisation of disease.",
            *data.notes,
        ],
        "versions": dict(data.versions),
    }
    card["claim"] = _claim(card, cfg, cv)
    return card


def _md_value(v: Any) -> str:
    return json.dumps(v) if isinstance(v, (dict, list)) else str(v)


def render_markdown(card: dict[str, Any]) -> str:
    """The card as Markdown.

    Example:
        >>> render_markdown(build_model_card(run)).splitlines()[0]
        '# Model card: demo'
    """
    d, s, t, p = card["data"], card["splits"], card["training"], card["performance"]
    lines = [f"# Model card: {card['name']}", "",
             f"{card['kind'].capitalize()}, {card['task']} classifier of {', '.join(card['classes'])}.", "",
             "## Intended use", "", card["intended_use"]["text"], "",
             "## Data", "", f"{d['images']} images of {d['patients']} patients, from {d['source']}; "
             f"input {d['input_size'][0]} x {d['input_size'][1]} "
             f"({'letterboxed' if d['preprocessing']['keep_aspect'] else 'stretched'}, window "
             f"{d['preprocessing']['window']}). Acquisition image sizes: {d['acquisition_image_sizes']}.", "",
             "| class | images | patients |", "|---|---|---|",
             *[f"| {r['class']} | {r['images']} | {r['patients']} |" for r in d["per_class"]], "",
             "## Splits", "", f"{s['description']}. {s['sizes']}.", "",
             f"Leakage check: {'passed' if s['leakage']['passed'] else 'not passed' if s['leakage']['checked'] else 'not checked'}"
             f" ({s['leakage']['note']}).", "",
             "## Training", "", f"{t['backbone']} (weights: {t['weights']}), loss {t['loss']}, augmentation "
             f"{t['augmentation']}, seed {t['seed']}; model: {card['model']}.", "",
             *[f"- stage {st['stage']}: {st['trainable']}, {st['epochs']} epochs, {st['optimizer']} lr {st['lr']}"
               for st in t["stages"]], "",
             "## Performance", "", f"{p['note']}.", "", "| metric | value | 95% CI |", "|---|---|---|",
             *[f"| {m['metric']} | {m['value']:.3f} | "
               f"{'[%.3f, %.3f]' % tuple(m['ci95']) if 'ci95' in m else '-'} |" for m in p["metrics"]], "",
             f"Operating point: {card['operating_point']}. Calibration: {card['calibration']}.", "",
             f"Shift: {card['shift']}.", "", f"Localisation: {_md_value(card['localisation'])}.", "",
             "## Limits", "", *[f"- {x}" for x in card["limitations"]], "",
             "## CLAIM checklist", "", "| item | topic | status | content |", "|---|---|---|---|",
             *[f"| {c['item']} | {c['topic']} | {c['status']} | {c['text'] if c['status'] == 'filled' else ''} |"
               for c in card["claim"]], "",
             "## Versions", "", ", ".join(f"{k} {_md_value(v)}" for k, v in card["versions"].items()), ""]
    return "\n".join(lines)


def write_model_card(run_dir: str | Path, data: ReportData | None = None) -> tuple[Path, Path]:
    """Write ``RUN/model_card.md`` and ``RUN/model_card.json``, after the PHI checks.

    Args:
        run_dir: a merged CV run or a training run folder.
        data: the run's report data, when already collected.

    Returns:
        The Markdown and JSON paths.

    Raises:
        ModelCardPHIError: the card would contain a patient id, film name or DICOM PHI value of
            the run (the config's name or class names hold one); nothing is written.

    Example:
        >>> md, js = write_model_card("runs/demo/cv-1a2b3c4d5e")
    """
    run = Path(run_dir)
    data = data if data is not None else collect_report_data(run, compute_cams=False)
    card = build_model_card(run, data)
    texts = {MODEL_CARD_MD: render_markdown(card), MODEL_CARD_JSON: json.dumps(card, indent=2) + "\n"}
    for name, text in texts.items():
        if find_in_text(text, data.forbidden):
            raise ModelCardPHIError(f"{run / name}: would contain a raw patient id, film name or DICOM PHI value "
                                    "of the run (not printed here); not written. Check the config name and class "
                                    "names for identifying data")
    out = []
    for name, text in texts.items():
        def write_checked(tmp: str, text: str = text, name: str = name) -> None:
            Path(tmp).write_text(text, encoding="utf-8")
            hits = deid_check([tmp], run)  # the written bytes, against the run's salted index
            if hits:
                raise ModelCardPHIError(f"{run / name}: matches the run's de-identification index ({hits[0][1]}); "
                                        "not written. Check the config name and class names for identifying data")

        out.append(write_atomic(run / name, write_checked))
    return out[0], out[1]
