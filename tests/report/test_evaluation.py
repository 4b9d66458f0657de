"""The HTML report of a ``medtl evaluate`` folder (medtl/report/evaluation.py): the shift
warning first, the metrics or why there are none, films to refer, and no film or patient.

The evaluation folders are written by the real :func:`evaluate_external` with the fake models
and synthetic pooled features of tests/evaluate/test_external_shift.py: no TensorFlow.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from medtl.evaluate.external import evaluate_external
from medtl.io.atomic import read_json
from medtl.report.evaluation import NO_ACCURACY, NO_SHIFT_MEASURE, is_evaluation_dir, write_evaluation_report
from medtl.report.html import PHIError
from tests.evaluate.test_external_shift import _fake_score, _run_with_summary

_DATA_URI = re.compile(r"data:[\w.+/-]*;base64,[A-Za-z0-9+/=]+")


def _evaluated(tmp_path: Path, monkeypatch, shift: float, unlabelled: bool = False,
               **kwargs) -> tuple[Path, dict, Path]:
    """(evaluation folder, its metrics, the run) of the fake run on its own films."""
    run, data = _run_with_summary(tmp_path, monkeypatch)
    if unlabelled:
        nolab = data.parent / "unlabelled.csv"
        pd.read_csv(data)[["file"]].to_csv(nolab, index=False)
        data = nolab
    _fake_score(monkeypatch, shift=shift)
    out = tmp_path / "ext"
    return out, evaluate_external(run, data, out, progress=False, **kwargs), run


def _text(page: str) -> str:
    """The page without its embedded images, entities decoded: what a reader can see."""
    return html.unescape(_DATA_URI.sub("data:", page))


def _assert_no_film_or_patient(page: str, out: Path) -> None:
    text = _text(page).lower()
    pred = pd.read_csv(out / "predictions.csv", dtype={"file": str, "patient": str})
    for f in pred["file"]:
        p = Path(f)
        for s in (f, p.name, p.stem, str(p.parent)):
            assert s.lower() not in text, s
    for pid in pred["patient"]:
        assert not re.search(rf"(?<![\w]){re.escape(pid.lower())}(?![\w])", text), pid
    assert str(out).lower() not in text


def test_shift_warning_is_shown_verbatim_at_the_top_with_the_figures(tmp_path, monkeypatch):
    out, m, _ = _evaluated(tmp_path, monkeypatch, shift=4.0)
    line = next(w for w in m["warnings"] if "differ from the training films" in w)
    page = write_evaluation_report(out).read_text()
    assert (out / "report.html").is_file()
    text = _text(page)
    assert f"WARNING: {line}" in text
    assert page.index('id="warnings"') < page.index('id="shift"') < page.index('id="results"')
    sh = m["shift"]
    lo, hi = sh["domain_auc_ci"]
    assert f"{sh['domain_auc']:.2f} [{lo:.2f}, {hi:.2f}]" in text
    n_ood = int(pd.read_csv(out / "predictions.csv")["ood"].sum())
    assert f"{100 * sh['share_ood']:.0f}% ({n_ood} of {sh['n']} films)" in text
    # the label metrics with their intervals, and the threshold used
    lo, hi = m["roc_auc_ci"]
    assert f"{m['roc_auc']:.3f}" in text and f"[{lo:.3f}, {hi:.3f}]" in text
    lo, hi = m["intervals"]["balanced_accuracy"]
    assert f"{m['balanced_accuracy']:.3f}" in text and f"[{lo:.3f}, {hi:.3f}]" in text
    assert f"Decision threshold: {m['threshold']:.4f}" in text
    # every image embedded: ROC curve, score distribution per class, films to refer
    imgs = re.findall(r'<img\b[^>]*\bsrc="([^"]*)"', page)
    assert len(imgs) == 3 and all(i.startswith("data:image/png;base64,") for i in imgs)
    assert "http://" not in page and "https://" not in page and "<script" not in page.lower()
    _assert_no_film_or_patient(page, out)


def test_films_to_refer_table_quotes_the_selective_block(tmp_path, monkeypatch):
    out, m, _ = _evaluated(tmp_path, monkeypatch, shift=0.0)
    text = _text(write_evaluation_report(out).read_text())
    sel = m["selective"]
    section = text[text.index('id="refer"'):]
    for k in ("100", "90", "80"):
        bal = sel["balanced_accuracy"][k]
        row = (f"<td>{k}%</td><td>{sel['n_kept'][k]}</td><td>{sel['accuracy'][k]:.3f}</td>"
               f"<td>{'–' if bal is None else f'{bal:.3f}'}</td>")
        assert row in section, row
    assert f"Accuracy is {sel['accuracy']['100']:.3f} on all {m['n']} films" in section
    # a folder written before metrics.json kept the block: the same figures, computed from predictions.csv
    meta = read_json(out / "metrics.json")
    del meta["selective"], meta["intervals"]
    (out / "metrics.json").write_text(json.dumps(meta))
    again = _text(write_evaluation_report(out).read_text())
    assert again[again.index('id="refer"'):].split("</table>")[0] == section.split("</table>")[0]


def test_no_warning_section_when_metrics_have_none(tmp_path, monkeypatch):
    out, m, _ = _evaluated(tmp_path, monkeypatch, shift=0.0)
    assert m["warnings"] == [] and m["shift"]["warning"] is None
    page = write_evaluation_report(out).read_text()
    assert 'id="warnings"' not in page and "WARNING" not in page
    sh = m["shift"]
    lo, hi = sh["domain_auc_ci"]
    assert (f"No shift detected: domain AUC {sh['domain_auc']:.2f} [{lo:.2f}, {hi:.2f}], "
            f"{100 * sh['share_ood']:.0f}% of {sh['n']} films outside the training range") in _text(page)


def test_unreliable_and_missing_shift_are_said(tmp_path, monkeypatch):
    out, m, _ = _evaluated(tmp_path, monkeypatch, shift=4.0)
    meta = read_json(out / "metrics.json")
    meta["shift"] = None
    meta["warnings"] = []
    (out / "metrics.json").write_text(json.dumps(meta))
    assert NO_SHIFT_MEASURE in _text(write_evaluation_report(out).read_text())
    meta["shift"] = {**m["shift"], "n": 12, "reliable": False, "warning": None,
                     "note": "only 12 films on one side: the shift measure is unreliable below 20"}
    (out / "metrics.json").write_text(json.dumps(meta))
    text = _text(write_evaluation_report(out).read_text())
    assert "unreliable with fewer than 20 films" in text and "unreliable: only 12 films" in text


def test_unlabelled_folder_says_no_accuracy_can_be_given(tmp_path, monkeypatch):
    out, m, _ = _evaluated(tmp_path, monkeypatch, shift=4.0, unlabelled=True)
    assert m["labelled"] is False
    page = write_evaluation_report(out).read_text()
    text = _text(page)
    assert NO_ACCURACY in text and "no accuracy can be given" in text
    assert "ROC AUC" not in text and 'id="refer"' not in text
    assert all(f"WARNING: {w}" in text for w in m["warnings"])
    q = m["score_distribution"]["score"]
    assert f"<td>{q['q50']:.3f}</td>" in text and f"<td>{q['share_positive']:.3f}</td>" in text
    assert len(re.findall(r"<img\b", page)) == 1  # the score distribution only
    _assert_no_film_or_patient(page, out)


def test_recalibration_table_gives_before_and_after_without_the_site_path(tmp_path, monkeypatch):
    out, m, _ = _evaluated(tmp_path, monkeypatch, shift=0.0, recalibrate=12)
    rc = m["recalibration"]
    text = _text(write_evaluation_report(out).read_text())
    section = text[text.index('id="recalibration"'):]
    assert f"of {rc['k']} local patients ({rc['n_fit']} films)" in section
    assert f"<td>{rc['threshold_before']:.4f}</td><td>{rc['threshold_after']:.4f}</td>" in section
    for side in ("before", "after"):
        assert f"{rc[side]['balanced_accuracy']:.3f}" in section
    assert "site_postprocess.json" in section and rc["site_file"] not in text


def test_page_naming_a_patient_is_not_written(tmp_path, monkeypatch):
    out, _, _ = _evaluated(tmp_path, monkeypatch, shift=0.0)
    pred = pd.read_csv(out / "predictions.csv", dtype={"file": str})
    meta = read_json(out / "metrics.json")
    meta["warnings"] = [f"a note that names {Path(pred['file'].iloc[0]).name}"]
    (out / "metrics.json").write_text(json.dumps(meta))
    with pytest.raises(PHIError):
        write_evaluation_report(out)
    assert not (out / "report.html").exists()


def test_is_evaluation_dir_tells_evaluation_from_run_folders(tmp_path, monkeypatch):
    out, _, run = _evaluated(tmp_path, monkeypatch, shift=0.0)
    assert is_evaluation_dir(out)
    assert not is_evaluation_dir(run) and not is_evaluation_dir(run / "fold_0") and not is_evaluation_dir(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a medtl evaluate output folder"):
        write_evaluation_report(run)


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_multiclass_and_multilabel_folders_mark_macro_figures(task, tmp_path, monkeypatch):
    from tests.evaluate.test_external import _cv_run
    from tests.evaluate.test_external import _fake_score as fake_score_per_task
    from tests.evaluate._cv_helpers import make_cfg, make_png_set

    data = make_png_set(tmp_path / "ds", task=task)
    run = _cv_run(make_cfg(data, tmp_path / "w", task=task), monkeypatch, tmp_path / "run")
    fake_score_per_task(monkeypatch)
    m = evaluate_external(run, data, tmp_path / "ext", progress=False)
    page = write_evaluation_report(tmp_path / "ext").read_text()
    text = _text(page)
    assert NO_SHIFT_MEASURE in text and 'id="refer"' not in text  # no feature summary; refer is binary only
    lo, hi = m["roc_auc_ci"]
    assert f"ROC AUC (macro)</td><td>{m['roc_auc']:.3f}<br><span class=\"ci\">[{lo:.3f}, {hi:.3f}]" in text
    overall = "Accuracy</td>" if task == "multiclass" else "Accuracy (macro)</td>"
    assert overall in text and "per_class.json" in text
    # ROC curves per class and one score distribution per class
    assert len(re.findall(r"<img\b", page)) == 1 + len(m["classes"])
    _assert_no_film_or_patient(page, tmp_path / "ext")
