"""Console text of the evaluate commands: the tables and lines ``medtl cv``, ``medtl evaluate``
and ``medtl compare`` print.

Everything here turns an already computed metrics dict into text, and nothing else: no files
are read or written, so the report and the command line can show a run's figures the same way.
:func:`format_thresholds` is the one way thresholds are written anywhere in medtl.

Example:
    >>> from medtl.evaluate.formatting import format_cv, format_thresholds
    >>> format_thresholds([0.1, 0.33333], ["x", "y"])
    'x 0.1000, y 0.3333'
    >>> print(format_cv(merge_cv("runs/cv1")))
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["format_cv", "format_thresholds", "format_external", "format_shift", "format_compare", "log",
           "NO_PATIENTS_NOTE", "NO_PATIENTS_WARNING"]

NO_PATIENTS_NOTE = (
    "No patient ids (data.patient_column: none): every image counts as its own patient, so "
    "films of one patient can sit on both sides of a split and every figure is optimistic if patients "
    "have several films"
)
NO_PATIENTS_WARNING = "WARNING: n" + NO_PATIENTS_NOTE[1:]  # the console's form of the report's note


def log(progress: bool, msg: str) -> None:
    """Print ``msg`` (flushed, so cluster job logs keep up) when ``progress`` is on."""
    if progress:
        print(msg, flush=True)


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "-" if v != v else f"{v:.{digits}f}"
    return str(v)


def format_thresholds(v: Any, names: Sequence[str] | None = None) -> str:
    """Thresholds (one value or a list) to 4 decimals; ``arg-max`` for None (multiclass).

    With ``names`` (multilabel: one per threshold) each value is labelled, e.g. ``effusion 0.31``.
    """
    if v is None:
        return "arg-max"
    values = [_fmt(float(x), 4) for x in np.atleast_1d(np.asarray(v, dtype=np.float64))]
    if names is not None and len(names) == len(values) > 1:
        values = [f"{n} {x}" for n, x in zip(names, values)]
    return ", ".join(values)


# --------------------------------------------------------------------------------------------
# Cross-validation


def _ci_text(m: dict, ci: dict, key: str) -> str:
    c = ci.get(key) if ci else None
    text = _fmt(m.get(key))
    if c and c.get("low") is not None:
        text += f" [{_fmt(c['low'])}, {_fmt(c['high'])}]"
    return text


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


_SHOWN = ("roc_auc", "pr_auc", "accuracy", "balanced_accuracy", "sensitivity", "specificity", "ppv", "npv",
          "f1", "brier", "ece")


def _multiclass_flat(m: dict) -> dict:
    """The headline multiclass figures of a metrics (or mean/std) dict, flat."""
    return {"macro_roc_auc": m["macro"]["roc_auc"], "accuracy": m["accuracy"],
            "balanced_accuracy": m["balanced_accuracy"], "macro_f1": m["macro"]["f1"],
            "brier": m["brier"], "ece": m["ece"]}


def format_cv(metrics: dict[str, Any]) -> str:
    """A readable table of :func:`~medtl.evaluate.pooling.merge_cv`'s metrics: pooled with 95%
    CIs, mean ± sd, per fold.

    Example:
        >>> print(format_cv(merge_cv("runs/cv1")))
    """
    task, done = metrics["task"], metrics["finished_folds"]
    head = (f"Cross-validation {metrics['run_dir']}: {len(done)} of {metrics['folds']} folds finished, "
            f"{metrics['n_predicted']} images, {metrics['n_patients']} patients")
    lines = [head]
    if metrics["missing_folds"]:
        lines.append(f"MISSING folds: {', '.join(map(str, metrics['missing_folds']))} (pooled figures cover "
                     "only the finished folds)")
    for w in metrics.get("warnings", []):
        lines.append(f"WARNING {w}")
    if metrics.get("skipped"):
        lines.append(f"{len(metrics['skipped'])} unreadable test image(s) left out (listed in metrics.json)")
    if metrics.get("patient_ids") is False:  # absent (older runs): unknown, say nothing
        lines.append(NO_PATIENTS_WARNING)
    rule = metrics.get("threshold_rule")
    decision = f"threshold: {rule} on each fold's validation split" if rule else "decision: arg-max"
    lines.append(f"{decision}; calibration: "
                 f"{metrics['calibration']}; intervals: 95% "
                 f"{ {'bca': 'BCa'}.get(metrics['bootstrap'].get('interval'), 'percentile')} "
                 "bootstrap over patients "
                 f"({metrics['bootstrap']['n_boot']} replicates)")
    fold_cols = [f"fold {f}" for f in done]
    header = ["metric", "pooled [95% CI]", "mean ± sd", *fold_cols]

    def rows_for(pooled: dict, ci: dict, per: dict[str, dict], across: dict, keys) -> list[list[str]]:
        rows = []
        for key in keys:
            if key not in pooled:
                continue
            a = across.get(key, {})
            sd = "" if not a or a.get("std") is None or a["std"] != a["std"] else f" ± {a['std']:.3f}"
            rows.append([key, _ci_text(pooled, ci, key), (_fmt(a.get("mean")) + sd) if a else "-",
                         *[_fmt(per[str(f)].get(key)) for f in done]])
        return rows

    per, across = metrics["per_fold"], metrics["across_folds"]
    if task == "binary":
        rows = rows_for(metrics["pooled"], metrics["pooled_ci"], per, across, _SHOWN)
        rows.append(["threshold", "-", "-", *[_fmt(per[str(f)].get("threshold"), 4) for f in done]])
        rows.append(["n images", _fmt(metrics["pooled"]["n"]), "-", *[_fmt(per[str(f)]["n"]) for f in done]])
        lines.append(_table(header, rows))
        if "pooled_uncalibrated" in metrics:
            u = metrics["pooled_uncalibrated"]
            lines.append(f"before calibration (pooled): brier {_fmt(u['brier'])}, ece {_fmt(u['ece'])}; "
                         f"after: brier {_fmt(metrics['pooled']['brier'])}, ece {_fmt(metrics['pooled']['ece'])}")
    elif task == "multilabel":
        for name in metrics["classes"]:
            lines.append(f"\n[{name}]")
            ci = metrics["pooled_ci"].get("per_label", {}).get(name, {})
            rows = rows_for(metrics["pooled"]["per_label"][name], ci,
                            {str(f): per[str(f)]["per_label"][name] for f in done},
                            across.get("per_label", {}).get(name, {}), _SHOWN)
            lines.append(_table(header, rows))
        lines.append("\n[macro]")
        pooled_ci = metrics["pooled_ci"]
        macro_ci = {"roc_auc": pooled_ci["macro_roc_auc"]} if "macro_roc_auc" in pooled_ci else {}
        lines.append(_table(header, rows_for(metrics["pooled"]["macro"], macro_ci,
                                             {str(f): per[str(f)]["macro"] for f in done}, across.get("macro", {}),
                                             _SHOWN)))
    else:
        flat_f = {str(f): _multiclass_flat(per[str(f)]) for f in done}
        flat_a = _multiclass_flat(across)
        flat_p = _multiclass_flat(metrics["pooled"])
        lines.append(_table(header, rows_for(flat_p, metrics["pooled_ci"], flat_f, flat_a, list(flat_p))))
        rows = [[f"{name} (roc_auc)", _fmt(metrics["pooled"]["per_class"][name]["roc_auc"]), "-",
                 *[_fmt(per[str(f)]["per_class"][name]["roc_auc"]) for f in done]] for name in metrics["classes"]]
        lines.append(_table(header, rows))
    final = metrics.get("final")
    if final:
        lines.append(final["note"])
        lines.append(f"final model threshold {format_thresholds(final.get('thresholds'), metrics['classes'])} = "
                     f"{final.get('threshold_rule') or 'arg-max'}; it has no calibrator")
        if final.get("caveat"):
            lines.append(f"NOTE {final['caveat']}")
    else:
        ens = metrics.get("ensemble", {})
        decision = (f"threshold {format_thresholds(ens.get('thresholds'), metrics['classes'])} = "
                    f"{ens.get('threshold_rule')}"
                    if ens.get("thresholds") is not None else "decision: the class with the highest mean score")
        lines.append(f"final model: ensemble of {len(ens.get('members', []))} fold models ({ens.get('combine')}); "
                     f"{decision}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# External test and run comparison


def format_external(metrics: dict[str, Any], title: str = "External test") -> str:
    """A readable table of :func:`~medtl.evaluate.external.evaluate_external`'s metrics.

    Example:
        >>> print(format_external(evaluate_external(run, "site2/labels.csv", "eval/site2")))
    """
    def f(v: Any, d: int = 3) -> str:
        if v is None:
            return "-"
        if isinstance(v, list):
            return ", ".join(f(x, d) for x in v)
        return f"{v:.{d}f}" if isinstance(v, float) else str(v)

    ci = metrics.get("roc_auc_ci") or [None, None]
    task = metrics.get("task", "binary")
    thr = metrics["threshold"]
    decision = "decision arg-max" if thr is None else (
        f"threshold {format_thresholds(thr, metrics.get('classes'))} (saved with the model)")
    lines = [f"{title}: {metrics['n']} images, {metrics['n_patients']} patients; {decision}"]
    if task != "binary":
        lines.append(f"macro averages over the {len(metrics.get('classes') or [])} "
                     f"{'labels' if task == 'multilabel' else 'classes'}; per class in per_class.json")
    lines += [f"WARNING {w}" for w in metrics.get("warnings") or []]
    shift = format_shift(metrics.get("shift"))
    if shift:
        lines.append(shift)
    if metrics.get("labelled") is False:
        for col, d in (metrics.get("score_distribution") or {}).items():
            q = ", ".join(f"{k} {f(v)}" for k, v in d.items())
            lines.append(f"{col:<18} {q}")
        return "\n".join(lines)
    lines.append(f"{'roc_auc':<18} {f(metrics['roc_auc'])} [95% CI {f(ci[0])}, {f(ci[1])}] "
                 "(BCa bootstrap over patients)")
    for k in ("pr_auc", "accuracy", "balanced_accuracy", "sensitivity", "specificity", "ppv", "npv", "f1",
              "brier", "ece"):
        lines.append(f"{k:<18} {f(metrics.get(k))}")
    sel = metrics.get("selective")
    if sel:
        acc = ", ".join(f"{f(sel['accuracy'][k])} with {k}%" for k in sel["kept_percent"])
        lines.append(f"films to refer: accuracy {acc} of films kept (the least confident referred first)")
    rc = metrics.get("recalibration")
    if rc:
        lines.append(f"Local recalibration: {rc['rule']} threshold (calibration {rc['calibration']}) refitted on "
                     f"{rc['k']} patients ({rc['n_fit']} films); the other {rc['n_patients_held_out']} patients "
                     f"({rc['n_held_out']} films), 95% patient-bootstrap intervals:")
        lines.append(f"{'':<18} {'before':<24} after")
        lines.append(f"{'threshold':<18} {f(rc['threshold_before']):<24} {f(rc['threshold_after'])}")
        for k in [k for k in rc["before"] if not k.endswith("_ci")]:
            cell = [f"{f(m[k])} [{f(m[k + '_ci'][0])}, {f(m[k + '_ci'][1])}]" if m[k + "_ci"][0] is not None
                    else f(m[k]) for m in (rc["before"], rc["after"])]
            lines.append(f"{k:<18} {cell[0]:<24} {cell[1]}")
        lines.append(f"site post-processing: {rc['site_file']} (medtl predict RUN FILES --site FILE applies it)")
    return "\n".join(lines)


def format_shift(shift: dict[str, Any] | None) -> str:
    """One line of shift figures (:func:`medtl.stats.shift.ShiftResult.as_dict`), '' for None.

    Example:
        >>> format_shift({"domain_auc": 0.52, "domain_auc_ci": [0.45, 0.6], "share_ood": 0.04, "n": 200,
        ...               "n_reference": 300, "ood_cut_percentile": 95.0, "reliable": True})
        'shift from the training films: domain AUC 0.52 [0.45, 0.60] (0.5: alike), 4% of 200 films beyond the training films\' 95th percentile k-NN distance (300 training films kept)'
    """
    if not shift:
        return ""
    ci = shift.get("domain_auc_ci") or [None, None]
    auc = "-" if shift.get("domain_auc") is None else (
        f"{shift['domain_auc']:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci[0] is not None else ""))
    line = (f"shift from the training films: domain AUC {auc} (0.5: alike), {100 * shift['share_ood']:.0f}% of "
            f"{shift['n']} films beyond the training films' {shift.get('ood_cut_percentile', 95):.0f}th percentile "
            f"k-NN distance ({shift.get('n_reference')} training films kept)")
    if not shift.get("reliable", True):
        line += "; too few films: unreliable"
    return line


def format_compare(result: dict[str, Any]) -> str:
    """A readable summary of :func:`~medtl.evaluate.external.compare_runs`.

    Example:
        >>> print(format_compare(compare_runs("runs/a/cv-1", "runs/b/cv-2")))
    """
    def f(v: Any, d: int = 4) -> str:
        return "-" if v is None else (f"{v:.{d}f}" if isinstance(v, float) else str(v))

    dl, bs = result["delong"], result["bootstrap"]
    per = result.get("per_class")
    pos = f"{result['n_pos']} positive, " if result.get("n_pos") is not None else ""
    lines = [
        f"A: {result['run_a']} ({result['score_a']})",
        f"B: {result['run_b']} ({result['score_b']})",
        f"{result['n_common']} common images ({pos}{result['n_patients']} patients)"
        + (f"; {result['n_only_a']} only in A, {result['n_only_b']} only in B (left out)"
           if result["n_only_a"] or result["n_only_b"] else ""),
        f"{'macro ROC AUC' if per else 'ROC AUC'}  A {f(result['auc_a'])}   B {f(result['auc_b'])}   "
        f"A - B {f(result['diff'])}",
    ]
    if dl is not None:
        lines.append(f"DeLong:               95% CI [{f(dl['ci_low'])}, {f(dl['ci_high'])}], z {f(dl['z'], 2)}, "
                     f"p = {f(dl['p_value'])} (images treated as independent)")
    lines.append(f"patient bootstrap:    95% CI [{f(bs['low'])}, {f(bs['high'])}] ({bs['n_boot']} replicates; "
                 "trust this one when patients have several films)")
    if per:
        width = max(len(c) for c in per)
        lines.append(f"per class (one against the rest):\n  {'class':<{width}}  AUC A   AUC B   A - B    "
                     "DeLong p  patient bootstrap 95% CI")
        for c, r in per.items():
            lines.append(f"  {c:<{width}}  {f(r['auc_a'], 3)}   {f(r['auc_b'], 3)}   {r['diff']:+.3f}   "
                         f"{f(r['delong']['p_value'])}    [{f(r['bootstrap']['low'], 3)}, "
                         f"{f(r['bootstrap']['high'], 3)}]")
    return "\n".join(lines)
