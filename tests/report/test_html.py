"""The HTML report: one self-contained, de-identified file showing the run's real numbers."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from medtl.report import collect_report_data, write_report
from medtl.report.deid import find_phi, hash_patient_id, run_salt
from medtl.report.gallery import class_views, render_gallery, select_cases
from medtl.report.html import PHIError, export_pdf, render_html

from .conftest import PHI_NAME


def _imgs(page: str) -> list[str]:
    return re.findall(r"<img\b[^>]*\bsrc=\"([^\"]*)\"", page)


def test_report_is_one_self_contained_deidentified_file(fake_cv_run, tmp_path):
    out_dir = tmp_path / "out"
    out = write_report(fake_cv_run.run, out_dir / "report.html")
    assert out == out_dir / "report.html" and [p.name for p in out_dir.iterdir()] == ["report.html"]
    page = out.read_text()

    # Nothing to fetch: no external src/href/url(), no script, every image an embedded PNG.
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//)""", page, re.I)
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page.lower() and "<link" not in page.lower()
    imgs = _imgs(page)
    # curves, films to refer, training per fold, film + map for 2 cases x 3 kinds
    assert len(imgs) == 4 + 1 + 3 + 2 * 6
    for src in imgs:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1], validate=True)
        with Image.open(io.BytesIO(png)) as im:
            im.verify()
        with Image.open(io.BytesIO(png)) as im:
            assert im.format == "PNG" and min(im.size) > 0 and not im.text

    # The run's numbers are on the page.
    m = json.loads((fake_cv_run.run / "metrics.json").read_text())
    assert f"{m['pooled']['roc_auc']:.3f}" in page
    assert f"[{m['pooled_ci']['roc_auc']['low']:.3f}, {m['pooled_ci']['roc_auc']['high']:.3f}]" in page
    for f in ("0", "1", "2"):
        assert f"{m['per_fold'][f]['sensitivity']:.3f}" in page
        assert f"{m['thresholds'][f][0]:.4f}" in page
    assert f"{m['across_folds']['roc_auc']['mean']:.3f}" in page
    assert f"± {m['across_folds']['roc_auc']['std']:.3f}" in page
    # Films to refer (issue 20): the selective curve's sentence, with the figures merge_cv wrote
    sel = m["selective"]["accuracy"]
    assert 'id="refer"' in page and f"Accuracy is {sel['100']:.3f} on all" in page
    assert f"and {sel['90']:.3f} on the" in page

    # Patients as salted hashes only; no raw id, path or planted PHI anywhere in the file.
    salt = run_salt(fake_cv_run.run)
    shown = select_cases(pd.read_csv(fake_cv_run.run / "oof_predictions.csv", dtype={"patient": str}), 2)
    assert len(shown) == 6
    for p in shown["patient"]:
        assert hash_patient_id(p, salt) in page
    for p in set(fake_cv_run.patients):
        assert p not in page
    assert "img_0" not in page and not any(f in page for f in fake_cv_run.files)  # no file names
    assert salt.hex() not in page
    assert find_phi(out, fake_cv_run.phi + sorted(set(fake_cv_run.patients))) == []


def test_collected_data_match_the_run(fake_cv_run):
    data = collect_report_data(fake_cv_run.run, compute_cams=False)
    m = json.loads((fake_cv_run.run / "metrics.json").read_text())
    assert data.kind == "cross-validation" and data.task == "binary" and data.seed == 5
    assert data.backbone == "smallcnn" and data.created == "2026-01-02 03:04"
    assert data.metrics.columns == ["pooled [95% CI]", "mean ± sd across folds",
                                    "fold 0 [95% CI]", "fold 1 [95% CI]", "fold 2 [95% CI]"]
    rows = dict(data.metrics.rows)
    auc = rows["ROC AUC"]
    assert auc[0].value == pytest.approx(m["pooled"]["roc_auc"])
    assert auc[0].low == pytest.approx(m["pooled_ci"]["roc_auc"]["low"])
    assert auc[1].value == pytest.approx(m["across_folds"]["roc_auc"]["mean"])
    assert auc[1].sd == pytest.approx(m["across_folds"]["roc_auc"]["std"])
    for i, f in enumerate("012"):
        cell = rows["Sensitivity (recall)"][2 + i]
        assert cell.value == pytest.approx(m["per_fold"][f]["sensitivity"])
        assert cell.low is not None and cell.low <= cell.value <= cell.high  # per-fold interval
        assert rows["Images"][2 + i].value == m["per_fold"][f]["n"]
    assert data.data_table == [{"class": "lesion", "images": 16, "patients": 8},
                               {"class": "normal", "images": 32, "patients": 16},
                               {"class": "all", "images": 48, "patients": 24}]
    assert [r["stage"] for r in data.stages] == [1, 2] and data.stages[0]["epochs_run"] == "3.0"
    assert [p.title for p in data.curves] == ["ROC curves", "Precision-recall curves", "Confusion matrix",
                                              "Calibration"]
    assert len(data.training) == 3
    assert [c.kind for c in data.gallery] == ["true positive"] * 2 + ["false positive"] * 2 + ["false negative"] * 2
    assert all(c.method == "gradcam++" and c.overlay_png and c.film_png for c in data.gallery)
    assert data.gallery[0].score == pytest.approx(fake_cv_run.scores.max())
    assert set(data.versions) >= {"medtl", "tensorflow", "keras", "python"}


def test_select_cases_ranks_by_confidence():
    df = pd.DataFrame({"label": [1, 1, 0, 0, 1, 1, 0], "score": [.9, .7, .8, .2, .1, .3, .95],
                       "threshold": [.5, .5, .5, .5, .5, .5, .9]})
    got = select_cases(df, 2)
    assert got["kind"].tolist() == ["true positive"] * 2 + ["false positive"] * 2 + ["false negative"] * 2
    assert got["score"].tolist() == [.9, .7, .95, .8, .1, .3]
    assert select_cases(df, 0).empty


def test_select_cases_shows_other_patients_before_a_second_film_of_one():
    df = pd.DataFrame({"patient": ["p1", "p1", "p2", "p3", "p3"], "label": [1] * 5,
                       "score": [.99, .98, .90, .95, .60], "threshold": [.5] * 5})
    assert select_cases(df, 3)["patient"].tolist() == ["p1", "p3", "p2"]  # still by score
    assert select_cases(df, 4)["score"].tolist() == [.99, .98, .95, .90]  # then repeats, by score


def test_gallery_says_why_a_map_is_missing_and_never_shows_the_path(fake_cv_run):
    preds = pd.read_csv(fake_cv_run.run / "oof_predictions.csv", dtype={"patient": str})
    preds["group"] = "fold " + preds["fold"].astype(str)
    preds["model_dir"] = str(fake_cv_run.run / "no-such-fold")
    cases = select_cases(preds, 1)
    salt = b"s"
    shown, note = render_gallery(cases, salt, classes=["normal", "lesion"], compute=False)
    assert all(c.film_png and c.overlay_png is None and "compute=False" in c.note for c in shown)
    shown, note = render_gallery(cases, salt, classes=["normal", "lesion"], compute=True)
    assert all(c.note.startswith("CAM not computed") for c in shown) and note
    assert all(c.film_png for c in shown)  # the film is still shown
    text = " ".join(c.note for c in shown) + note
    assert "no-such-fold" in text or "Error" in text
    for f in cases["file"]:
        assert f not in text


def test_phi_in_the_page_stops_the_report(fake_cv_run, tmp_path):
    cfg_path = fake_cv_run.run / "config.yaml"
    raw = yaml.safe_load(cfg_path.read_text())
    raw["name"] = PHI_NAME  # the DICOM PatientName of a gallery case, typed into the config
    cfg_path.write_text(yaml.safe_dump(raw))
    with pytest.raises(PHIError, match="not written"):
        write_report(fake_cv_run.run, tmp_path / "r.html", compute_cams=False)
    assert not (tmp_path / "r.html").exists()


def test_report_of_a_training_run(tmp_path):
    from medtl.config import config_from_dict

    run = tmp_path / "train-run"
    run.mkdir()
    cfg = config_from_dict({"name": "t", "data": {"manifest": "x.csv"}, "evaluate": {"bootstrap": 50},
                            "report": {"cases": 1}})
    (run / "config.yaml").write_text(cfg.to_yaml())
    rng = np.random.default_rng(0)
    y = np.tile([0, 1], 10)
    files = []
    for i in range(20):
        f = tmp_path / f"f{i}.png"
        Image.fromarray((rng.random((16, 16)) * 255).astype(np.uint8)).save(f)
        files.append(str(f))
    pd.DataFrame({"path": files, "patient_id": [f"ID{i // 2:03d}Q" for i in range(20)], "label": y,
                  "score": np.clip(0.3 + 0.4 * y + rng.normal(0, .2, 20), 0, 1)}).to_csv(
        run / "val_predictions.csv", index=False)
    (run / "model_info.json").write_text(json.dumps({"task": "binary", "classes": ["no", "yes"],
                                                     "threshold": 0.5, "threshold_rule": "fixed:0.5"}))
    pd.DataFrame({"stage": [1, 1], "epoch": [1, 2], "global_epoch": [1, 2], "loss": [1, .5],
                  "val_loss": [1, .6], "roc_auc": [.6, .8], "val_roc_auc": [.5, .7]}).to_csv(
        run / "history.csv", index=False)
    page = write_report(run, tmp_path / "r.html", compute_cams=False).read_text()
    data = collect_report_data(run, compute_cams=False)
    assert data.kind == "training run" and data.metrics.columns == ["validation [95% CI]"]
    assert f"{dict(data.metrics.rows)['ROC AUC'][0].value:.3f}" in page
    assert "ID000Q" not in page
    assert len(_imgs(page)) == 4 + 1 + len(data.gallery) and data.gallery  # films, no maps without compute

    # With the calibrator and threshold medtl train fitted, the report shows what predict applies.
    from medtl.evaluate import binary_metrics
    from medtl.stats.postprocess import PostProcess

    val = pd.read_csv(run / "val_predictions.csv")
    pp = PostProcess.fit("binary", ["no", "yes"], val[["label"]].to_numpy(float), val[["score"]].to_numpy(float),
                         "youden", "temperature")
    (run / "postprocess.json").write_text(json.dumps(pp.to_dict()))
    cal = collect_report_data(run, compute_cams=False)
    assert cal.calibration == "temperature" and f"{pp.thresholds[0]:.4f} (youden" in cal.threshold_text
    assert any("calibrated (temperature)" in n for n in cal.notes)
    want = binary_metrics(val["label"], pp.calibrate(val[["score"]].to_numpy(float))[:, 0], pp.thresholds[0])
    assert dict(cal.metrics.rows)["Brier score (lower is better)"][0].value == pytest.approx(want["brier"])


def test_render_refuses_external_resources(fake_cv_run, monkeypatch):
    import jinja2

    import medtl.report.html as rh

    data = collect_report_data(fake_cv_run.run, compute_cams=False)
    data.notes.append('see <img src="https://example.org/x.png">')  # text: escaped, never fetched
    assert "https://example.org" in render_html(data)
    for bad in ('<img src="https://example.org/x.png">', "<link href='//cdn.example.org/a.css'>",
                "<style>body { background: url( http://example.org/b.png ) }</style>"):
        env = jinja2.Environment(loader=jinja2.DictLoader({rh.TEMPLATE: bad}))
        monkeypatch.setattr(rh, "_environment", lambda env=env: env)
        with pytest.raises(rh.ExternalResourceError, match="external resource"):
            render_html(data)


def test_pdf_export_names_what_to_install_when_no_renderer(tmp_path, monkeypatch):
    import sys

    import medtl.report.html as rh

    html = tmp_path / "r.html"
    html.write_text("<html><body><p>hello</p></body></html>")
    monkeypatch.setitem(sys.modules, "weasyprint", None)  # import fails
    monkeypatch.setattr(rh, "_chromium", lambda: None)
    with pytest.raises(RuntimeError, match="pip install weasyprint.*apt-get install chromium"):
        export_pdf(html, tmp_path / "r.pdf")


def test_pdf_export_with_chromium(fake_cv_run, tmp_path):
    import medtl.report.html as rh

    if rh._chromium() is None:
        pytest.skip("no Chromium installed (apt-get install chromium); PDF export not tested")
    out = write_report(fake_cv_run.run, tmp_path / "r.html", pdf=True, compute_cams=False)
    pdf = out.with_suffix(".pdf")
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 10_000
    assert find_phi(pdf, fake_cv_run.phi + sorted(set(fake_cv_run.patients))) == []


@pytest.mark.slow
def test_end_to_end_real_cv_run_with_cams_leaks_no_planted_phi(tmp_path):
    """Synthetic DICOM with planted PHI -> 2-fold CV of a tiny CNN -> report with Grad-CAM maps;
    no planted header value appears in any file of the run folder or in the report."""
    from medtl.config import config_from_dict
    from medtl.data.synthetic import make_sample_data
    from medtl.evaluate.cv import run_cv

    labels = make_sample_data(tmp_path / "data", n_patients=20, seed=3, image_size=(64, 64), prevalence=0.4)
    cfg = config_from_dict({
        "name": "e2e", "seed": 1, "output_dir": str(tmp_path / "runs"),
        "data": {"manifest": str(labels), "path_column": "file", "label_column": "label",
                 "patient_column": "patient_id", "image_size": [32, 32], "cache_dir": str(tmp_path / "cache"),
                 "val_fraction": 0.5, "workers": 1},
        "augment": {"preset": "none"}, "model": {"backbone": "smallcnn", "weights": "none"},
        "train": {"batch_size": 8, "mixed_precision": "off", "distribute": "none",
                  "stages": [{"unfreeze": "head", "epochs": 1, "lr": 1e-2},
                             {"unfreeze": "all", "epochs": 1, "lr": 1e-3}]},
        "evaluate": {"folds": 2, "bootstrap": 50, "threshold": "fixed:0.5"},
        "report": {"cam": "gradcam++", "cases": 2, "compare": "occlusion"},
    })
    run = run_cv(cfg, progress=False)
    out = write_report(run, tmp_path / "report.html")
    data = collect_report_data(run)
    maps = [c for c in data.gallery if c.overlay_png]
    assert maps and all(c.method == "gradcam++" and "feature map" in c.method_reason for c in maps)
    assert all(c.film_png and not c.note for c in data.gallery)
    assert all(c.second_png and c.second_method == "occlusion" and "patch 0.125" in c.second_reason
               for c in maps)
    assert all(c.peak_gap is None or 0.0 <= c.peak_gap <= 1.42 for c in maps)
    assert out.read_text(encoding="utf-8").count('alt="occlusion map"') == len(maps)
    # Which map to trust: one row per method and the random map, AUCs and intervals in [0, 1].
    page = out.read_text(encoding="utf-8")
    assert 'id="faithfulness"' in page and 'href="#faithfulness"' in page
    assert data.faithfulness_films > 0 and not data.faithfulness_note
    rows = data.faithfulness
    from medtl.registry import method_label

    methods = [r["method"] for r in rows if not r["method"].startswith("Random map")]
    assert sorted(methods) == sorted([method_label("gradcam++"), method_label("occlusion")])
    # the chance level on each method's own grid, then pixel-wise
    assert {r["method"] for r in rows[len(methods):-1]} <= {f"Random map on a {r['grid']} grid" for r in rows[:2]}
    for r in rows:
        nums = [float(v) for v in re.findall(r"-?\d+\.\d+", r["deletion"] + " " + r["insertion"])]
        assert len(nums) == 6 and all(0.0 <= v <= 1.0 for v in nums)
        assert f"<b>{r['method']}</b>" in page and r["deletion"] in page
    assert all(r["grid"] for r in rows[:-1]) and rows[-1]["method"] == "Random map (pixels)"

    phi = json.loads((tmp_path / "data" / "phi.json").read_text())["patients"]
    planted = sorted({v for d in phi.values() for k, vals in d.items() if k != "PatientSex"
                      for v in (vals if isinstance(vals, list) else [vals])})
    assert len(planted) > 40
    assert find_phi(run, planted) == []
    assert find_phi(out, planted + sorted(phi)) == []  # nor raw patient ids in the report


def _multi_preds(task: str) -> pd.DataFrame:
    """Six held-out predictions of a two-label (or three-class) run, with known decisions."""
    base = pd.DataFrame({"file": [f"/x/img{i}.png" for i in range(6)], "patient": list("ppqqrs"),
                         "group": "fold 0", "model_dir": "/runs/fold_0"})
    if task == "multilabel":
        return base.assign(label_a=[1, 1, 0, 0, 1, 0], label_b=[0, 1, 1, 0, 0, 0],
                           score_a=[.9, .6, .7, .1, .2, .3], score_b=[.1, .8, .3, .6, .05, .2],
                           threshold_a=.5, threshold_b=[.5, .5, .5, .5, .4, .4])
    return base.assign(label=[0, 1, 2, 0, 1, 2],
                       score_a=[.7, .2, .1, .3, .6, .2], score_b=[.2, .7, .2, .6, .3, .1],
                       score_c=[.1, .1, .7, .1, .1, .7])


def test_class_views_judge_each_label_against_the_rest():
    views = class_views(_multi_preds("multilabel"), "multilabel", ["a", "b"])
    assert [v["target"].iloc[0] for v in views] == ["a", "b"]
    a, b = views
    assert a["label"].tolist() == [1, 1, 0, 0, 1, 0] and b["label"].tolist() == [0, 1, 1, 0, 0, 0]
    assert a["predicted"].tolist() == [True, True, True, False, False, False]
    assert b["threshold"].tolist() == [.5, .5, .5, .5, .4, .4]
    assert a["truth"].tolist() == ["a", "a;b", "b", "none", "a", "none"]
    assert a["called"].tolist() == ["a", "a;b", "a", "b", "none", "none"]
    cases = select_cases(a, 5)
    assert cases.groupby("kind", sort=False)["file"].apply(list).to_dict() == {
        "true positive": ["/x/img0.png", "/x/img1.png"], "false positive": ["/x/img2.png"],
        "false negative": ["/x/img4.png"]}


def test_class_views_of_a_multiclass_run_follow_the_arg_max():
    views = class_views(_multi_preds("multiclass"), "multiclass", ["a", "b", "c"])
    a = views[0]
    assert a["label"].tolist() == [1, 0, 0, 1, 0, 0]
    assert a["predicted"].tolist() == [True, False, False, False, True, False]  # arg-max, no threshold
    assert a["threshold"].isna().all()
    assert a["called"].tolist() == ["a", "b", "c", "b", "a", "c"]
    cases = select_cases(a, 3)
    assert cases["kind"].tolist() == ["true positive", "false positive", "false negative"]
    assert cases["file"].tolist() == ["/x/img0.png", "/x/img4.png", "/x/img3.png"]


def test_multilabel_gallery_maps_each_case_for_its_own_label(fake_cv_run, monkeypatch):
    import medtl.report.gallery as gallery

    calls = []

    def fake_overlays(model_dir, files, method, target_layer=None, class_name=None, patch=None, stride=None):
        calls.append((model_dir, class_name, tuple(files)))
        film = np.zeros((8, 8), np.float32)
        off = 0.4 if class_name == "a" else 0.02  # share of the map's heat on the padding
        return {f: (film, np.zeros((8, 8, 3), np.uint8), off, film) for f in files}, "gradcam"

    monkeypatch.setattr(gallery, "cam_overlays", fake_overlays)
    preds = _multi_preds("multilabel")
    cases = pd.concat([select_cases(v, 1) for v in class_views(preds, "multilabel", ["a", "b"])],
                      ignore_index=True)
    precomputed = {f: (b"x", "gradcam++") for f in preds["file"]}  # says nothing of the label
    shown, note = render_gallery(cases, b"salt", classes=["a", "b"], overlays=precomputed)
    assert not note
    assert [(c.target, c.kind) for c in shown] == [("a", "true positive"), ("a", "false positive"),
                                                   ("a", "false negative"), ("b", "true positive"),
                                                   ("b", "false positive"), ("b", "false negative")]
    assert sorted({c for _, c, _ in calls}) == ["a", "b"]
    for c, row in zip(shown, cases.itertuples()):
        assert (row.model_dir, c.target) in {(m, t) for m, t, files in calls if row.file in files}
        assert c.method == "gradcam" and c.method_reason != "precomputed"
    assert shown[0].label == "a" and shown[0].called == "a" and shown[0].threshold == .5

    data = collect_report_data(fake_cv_run.run, compute_cams=False)
    data.gallery = shown
    page = render_html(data)
    assert "<h3>a</h3>" in page and "<h3>b</h3>" in page
    assert "gradcam for b" in page and "Judged as b against the rest" in page
    warned = '<dd class="warn">40% of the map\'s heat: on the padding outside the film, not drawn'
    assert page.count(warned) == 3 and page.count("<dd>2% of the map's heat</dd>") == 3


def test_off_film_row_only_for_padded_films_whose_map_has_heat(fake_cv_run, monkeypatch):
    """A film that filled the canvas had no padding to put heat on: its case shows no off-film
    share rather than a 0% that reads like a finding; nor does a map with no heat at all."""
    import medtl.report.gallery as gallery

    shares = {"/x/img0.png": None, "/x/img2.png": float("nan"), "/x/img4.png": 0.3}

    def fake_overlays(model_dir, files, method, target_layer=None, class_name=None, patch=None, stride=None):
        film = np.zeros((8, 8), np.float32)
        return {f: (film, np.zeros((8, 8, 3), np.uint8), shares[f], film) for f in files}, "gradcam"

    monkeypatch.setattr(gallery, "cam_overlays", fake_overlays)
    a = class_views(_multi_preds("multilabel"), "multilabel", ["a", "b"])[0]
    cases = select_cases(a, 1)
    assert sorted(cases["file"]) == sorted(shares)
    shown, note = render_gallery(cases, b"salt", classes=["a", "b"])
    assert not note
    assert {f: c.off_film for f, c in zip(cases["file"], shown)} == {
        "/x/img0.png": None, "/x/img2.png": None, "/x/img4.png": 0.3}
    data = collect_report_data(fake_cv_run.run, compute_cams=False)
    data.gallery = shown
    page = render_html(data)
    assert page.count("<dt>Off the film</dt>") == 1 and "<dd class=\"warn\">30% of the map's heat" in page


def _spot(shape, peak):
    """A map of one film with its only heat at ``peak`` (None: no heat at all)."""
    m = np.zeros(shape, np.float32)
    if peak is not None:
        m[peak] = 1.0
    return m


def test_second_map_sits_beside_the_first_with_the_distance_between_their_peaks(fake_cv_run, monkeypatch):
    """report.compare maps each case a second way, each method with its own settings; a backbone
    that gets occlusion either way gets no copy of its map (and no warning), and a failed second
    map is said on the case."""
    import medtl.report.gallery as gallery

    film = np.zeros((100, 200), np.float32)
    peaks = {"gradcam": {"/x/img0.png": (10, 10), "/x/img2.png": (50, 100), "/x/img4.png": (0, 0)},
             "occlusion": {"/x/img0.png": (13, 14), "/x/img2.png": (50, 160), "/x/img4.png": None}}
    calls = []

    def fake_overlays(model_dir, files, method, target_layer=None, class_name=None, patch=None, stride=None):
        calls.append((method, target_layer, patch))
        return {f: (film, np.full((100, 200, 3), 7 if method == "occlusion" else 3, np.uint8), None,
                    _spot(film.shape, peaks[method][f])) for f in files}, method

    monkeypatch.setattr(gallery, "cam_overlays", fake_overlays)
    a = class_views(_multi_preds("multilabel"), "multilabel", ["a", "b"])[0]
    cases = select_cases(a, 1).sort_values("file")
    shown, note = render_gallery(cases, b"salt", classes=["a", "b"], target_layer="conv9",
                                 occlusion={"patch": 0.2, "stride": None}, compare="occlusion")
    assert not note and not [c.note for c in shown if c.note]
    assert calls == [("gradcam", "conv9", None), ("occlusion", None, 0.2)]  # each its own settings
    assert [c.second_method for c in shown] == ["occlusion"] * 3
    assert [c.peak_gap for c in shown] == [pytest.approx(5 / 200), pytest.approx(60 / 200), None]
    data = collect_report_data(fake_cv_run.run, compute_cams=False)
    data.gallery = shown
    page = render_html(data)
    assert page.count('class="pair three"') == 3 and page.count('alt="occlusion map"') == 3
    assert "Each case also shows a second map on the right (occlusion)" in page
    assert page.count("<dt>Second map</dt>") == 3
    assert "<dd>2% of the film's longer side</dd>" in page and "<dd>30% of the film's longer side</dd>" in page
    assert "– (a map without heat)" in page

    # A hub backbone gets occlusion for either method: no second copy, and the case says why.
    monkeypatch.setattr(gallery, "cam_overlays", lambda *a, **k: ({f: (film, np.zeros((100, 200, 3), np.uint8),
                                                                        None, film) for f in a[1]}, "occlusion"))
    shown, _ = render_gallery(cases, b"salt", classes=["a", "b"], method="gradcam", compare="occlusion")
    assert all(c.second_png is None and c.second_reason == "not drawn: it would repeat the occlusion map"
               and not c.note for c in shown)  # no note: nothing is missing, so no warning
    data.gallery = shown
    assert render_html(data).count("<dt>Second map</dt><dd>not drawn: it would repeat the occlusion map</dd>") == 3

    def failing_second(model_dir, files, method, *args, **kwargs):
        if method == "occlusion":
            raise MemoryError("out of memory")
        return fake_overlays(model_dir, files, method, *args, **kwargs)

    monkeypatch.setattr(gallery, "cam_overlays", failing_second)
    shown, _ = render_gallery(cases, b"salt", classes=["a", "b"], compare="occlusion")
    assert all(c.overlay_png and c.second_png is None for c in shown)
    assert all(c.note == "second map not computed: MemoryError: out of memory" for c in shown)


@pytest.mark.parametrize("first, second, coarse, fine, patch", [
    ("gradcam", None, True, False, False),
    ("intgrad", None, False, True, False),
    ("occlusion", None, False, False, True),
    ("intgrad", "scorecam", True, True, False),  # the second map is on a feature map
    ("precomputed-method", None, False, False, False),
])
def test_gallery_says_how_coarse_a_map_is_by_the_grid_its_method_computes_it_on(
        fake_cv_run, first, second, coarse, fine, patch):
    """The feature-map sentence is for maps on a target layer's grid only: integrated gradients
    are at the input's resolution and occlusion on its patch grid, each with its own sentence."""
    from medtl.report.gallery import Case

    data = collect_report_data(fake_cv_run.run, compute_cams=False)
    data.gallery = [Case(kind="true positive", patient="p", image="i", source="s", label="1", score=0.9,
                         threshold=0.5, method=first, second_method=second)]
    page = render_html(data)
    assert ("as coarse as that feature map" in page) == coarse
    assert ("pixel by pixel at the model's input size" in page) == fine
    assert ("as coarse as the occlusion patch" in page) == patch
    assert "last feature map" not in page


def test_cli_report_warns_and_exits_1_when_gallery_cases_are_incomplete(fake_cv_run, tmp_path, capsys):
    from medtl.cli import main

    assert main(["report", str(fake_cv_run.run), "--out", str(tmp_path / "ok.html")]) == 0
    assert "warning" not in capsys.readouterr().err
    # Maps left out on purpose are not a problem.
    assert main(["report", str(fake_cv_run.run), "--out", str(tmp_path / "quick.html"), "--no-cams"]) == 0
    assert "warning" not in capsys.readouterr().err
    # A second map per case, asked for on the command line: this fake run has overlays but no
    # saved models to make one with, which is said; the run's own method is refused.
    assert main(["report", str(fake_cv_run.run), "--out", str(tmp_path / "two.html"), "--compare", "occlusion"]) == 1
    err = capsys.readouterr().err
    assert "6 of 6 gallery case(s) incomplete" in err and "second map not computed" in err, err
    assert main(["report", str(fake_cv_run.run), "--out", str(tmp_path / "same.html"), "--compare", "gradcam"]) == 1
    assert "compare: 'gradcam' is the run's report.cam already" in capsys.readouterr().err

    shown = select_cases(pd.read_csv(fake_cv_run.run / "oof_predictions.csv", dtype={"patient": str}), 2)
    Path(shown["file"].iloc[0]).unlink()  # a film moved away after the run
    assert main(["report", str(fake_cv_run.run), "--out", str(tmp_path / "moved.html")]) == 1
    err = capsys.readouterr().err
    assert "warning:" in err and "1 of 6 gallery case(s) incomplete" in err, err
    assert shown["file"].iloc[0] not in err  # the console keeps the report's de-identification
    assert (tmp_path / "moved.html").is_file()  # written all the same, with the case's note


def test_planted_phi_in_names_folders_mrns_and_a_bare_dicom_reaches_no_shareable_output(tmp_path):
    """Issue 23, point 5: PHI planted in film names, patient folders, numeric record numbers and
    a preamble-less DICOM header is in no shareable output: the report, and the run folder's
    files other than the local tables that list the user's own films."""
    from medtl.report.deid import LOCAL_FILES, deid_check, read_phi

    from .conftest import make_fake_cv_run

    fake = make_fake_cv_run(tmp_path / "planted", overlays=False, planted=True)
    assert read_phi(fake.dicom_file, parts=False)[:2] == [PHI_NAME, fake.patients[fake.files.index(fake.dicom_file)]]
    out = write_report(fake.run, tmp_path / "share" / "report.html", compute_cams=False)
    films = [Path(f) for f in fake.files]
    planted = sorted({*fake.phi, *fake.patients, *(f.name for f in films), *(f.stem for f in films),
                      *(f.parent.name for f in films), *fake.files})
    assert find_phi(out, planted) == []
    assert "SMITH" not in out.read_text() and "4071" not in out.read_text()
    assert deid_check([out], fake.run) == []
    shareable = [p for p in fake.run.rglob("*") if p.is_file() and p.name not in LOCAL_FILES]
    assert shareable and [h for p in shareable for h in find_phi(p, planted)] == []
    assert deid_check([fake.run], fake.run) == []
    # The local tables do name the films: deid_check says so when asked to look at them.
    assert deid_check([fake.run], fake.run, include_local=True)

    # A record number or a film stem typed into the config stops the report.
    cfg_path = fake.run / "config.yaml"
    for leak in (fake.patients[0], films[3].stem):
        raw = yaml.safe_load(cfg_path.read_text())
        raw["name"] = f"study {leak}"
        cfg_path.write_text(yaml.safe_dump(raw))
        with pytest.raises(PHIError, match="not written"):
            write_report(fake.run, tmp_path / "r.html", compute_cams=False)
        assert not (tmp_path / "r.html").exists()


def test_model_card_is_written_with_the_report_and_alone_and_leaks_no_planted_phi(tmp_path):
    """Issue 22, point 3: RUN/model_card.md and .json (and the report's section) carry what the
    run knows, CLAIM items filled or left to the authors, and no planted PHI."""
    from medtl.report.deid import deid_check
    from medtl.report.model_card import TODO, write_model_card

    from .conftest import make_fake_cv_run

    fake = make_fake_cv_run(tmp_path / "planted", overlays=False, planted=True)
    out = write_report(fake.run, tmp_path / "share" / "report.html", compute_cams=False)
    assert 'id="model-card"' in out.read_text() and "CLAIM checklist" in out.read_text()
    md, js = fake.run / "model_card.md", fake.run / "model_card.json"
    card = json.loads(js.read_text())
    m = json.loads((fake.run / "metrics.json").read_text())
    assert card["intended_use"]["from"] == "default" and card["intended_use"]["text"].startswith("Research use only")
    assert card["data"]["images"] == 48 and card["data"]["patients"] == 24
    assert card["splits"]["leakage"]["checked"] and card["splits"]["leakage"]["passed"]
    auc = next(r for r in card["performance"]["metrics"] if r["metric"] == "ROC AUC")
    assert auc["value"] == pytest.approx(m["pooled"]["roc_auc"], abs=1e-4) and len(auc["ci95"]) == 2
    status = {c["topic"]: c["status"] for c in card["claim"]}
    assert status["Data sources"] == "filled" and status["Leakage between partitions"] == "filled"
    assert status["Ground truth: definition and source"] == TODO and status["External testing"] == TODO
    assert f"{m['pooled']['roc_auc']:.3f}" in md.read_text()
    films = [Path(f) for f in fake.files]
    planted = sorted({*fake.phi, *fake.patients, *(f.name for f in films), *(f.stem for f in films),
                      *(f.parent.name for f in films), *fake.files})
    assert find_phi(md, planted) == [] and find_phi(js, planted) == []
    assert deid_check([md, js], fake.run) == []

    # Callable alone, with the config's intended use; a leak in the config stops it.
    raw = yaml.safe_load((fake.run / "config.yaml").read_text())
    raw.setdefault("report", {})["intended_use"] = "Triage research on adult chest films"
    (fake.run / "config.yaml").write_text(yaml.safe_dump(raw))
    write_model_card(fake.run)
    assert json.loads(js.read_text())["intended_use"]["text"] == "Triage research on adult chest films"
    raw["name"] = f"study {fake.patients[0]}"
    (fake.run / "config.yaml").write_text(yaml.safe_dump(raw))
    before = md.read_text()
    with pytest.raises(RuntimeError, match="not written"):
        write_model_card(fake.run)
    assert md.read_text() == before
