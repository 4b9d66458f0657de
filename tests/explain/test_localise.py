"""``medtl localise`` end to end (issue 21): the old training-run fixture with a model whose
evidence is known (bright spots), on films with spots at known places. Its figures must agree
with an independent scorer written here on the same maps, intervals included."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from tests.explain.test_files import _known_answer_model

FIXTURE = Path(__file__).resolve().parents[1] / "run" / "fixtures" / "train_run"
SPOTS = [(20, 24), (70, 30), (30, 70), (75, 75), (48, 15), (15, 60)]  # (row, column) on 96x96 films


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A run that calls a film positive exactly when it has a bright spot (threshold 0.188), six
    spot films of three patients and two annotated films without a spot."""
    work = tmp_path_factory.mktemp("localise")
    run = work / "run"
    shutil.copytree(FIXTURE, run)
    # Evidence: film above 0.75, through a 2x-pooled map; no spot: sigmoid(-3) = 0.05.
    _known_answer_model(32, [1.0], [-0.75], [[3000.0]], [-3.0]).save(run / "model.keras")
    yy, xx = np.mgrid[0:96, 0:96]
    rows = []
    for i, (r, c) in enumerate(SPOTS + [(40, 40), (60, 60)]):
        spot = np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * 8.0**2)) if i < len(SPOTS) else 0 * yy
        Image.fromarray((40 + 215 * spot).astype(np.uint8)).save(work / f"f{i}.png")
        rows.append({"file": f"f{i}.png", "x": c - 8, "y": r - 8, "w": 16, "h": 16, "patient_id": f"P{i // 2}"})
    pd.DataFrame(rows).to_csv(work / "boxes.csv", index=False)
    far = pd.DataFrame(rows).assign(x=lambda d: 95 - d["x"] - 16 - 8, y=lambda d: 95 - d["y"] - 16 - 8)
    far.assign(x=far["x"].clip(0, 80), y=far["y"].clip(0, 80)).to_csv(work / "far.csv", index=False)
    return run, work


def _independent(m, box, flat_share):
    """Pointing game, heat in box and IoBB as the README defines them, written from scratch."""
    x, y, w, h = box
    inside = np.zeros(m.shape, bool)
    inside[y:y + h, x:x + w] = True
    peaks = np.argwhere(m == m.max())
    pointing = float(any(inside[r, c] for r, c in peaks)) if m.max() > m.min() else flat_share
    heat = (m - m.min())[inside].sum() / (m - m.min()).sum()
    lab, n = ndimage.label((m - m.min()) >= 0.5 * (m.max() - m.min()), np.ones((3, 3)))
    big = np.argmax([(lab == k).sum() for k in range(1, n + 1)]) + 1
    rr, cc = np.nonzero(lab == big)
    pred = np.zeros(m.shape, bool)
    pred[rr.min():rr.max() + 1, cc.min():cc.max() + 1] = True
    return pointing, heat, (pred & inside).sum() / pred.sum()


def test_localise_agrees_with_an_independent_scorer(case, tmp_path, capsys):
    from medtl.cli import main
    from medtl.explain.files import maps_for_files

    run, work = case
    out = tmp_path / "loc"
    assert main(["localise", str(run), str(work / "boxes.csv"), "--out", str(out), "--method", "gradcam",
                 "--bootstrap", "300", "--seed", "5"]) == 0
    text = capsys.readouterr().out
    res = json.loads((out / "localisation.json").read_text())
    assert res["counts"] == {"annotated": 8, "unreadable": 0, "scored": 6, "annotated_not_called_positive": 2,
                             "patients": 3}
    assert res["settings"]["patients_from"] == "annotations patient_id column"
    assert "scored 6 annotated films called positive (2 annotated films not called positive), 3 patients" in text

    # The same maps, scored by hand.
    files = [str(work / f"f{i}.png") for i in range(len(SPOTS))]
    fm = maps_for_files(run, files, method="gradcam")
    boxes = [(c - 8, r - 8, 16, 16) for r, c in SPOTS]
    hand = np.array([_independent(fm.maps[f], b, 256 / 96**2) for f, b in zip(files, boxes)])
    got = res["methods"]["gradcam"]
    assert hand[:, 0].tolist() == [1.0] * 6  # every map peaks on its spot
    for k, col in (("pointing", 0), ("heat_in_box", 1)):
        assert got[k]["point"] == pytest.approx(hand[:, col].mean(), abs=1e-4)
    assert got["iobb_hit"]["point"] == pytest.approx(np.mean(hand[:, 2] > 0.1), abs=1e-4)
    # Heat in box's interval, by hand: patients drawn with the same seed, weighted film means.
    rng = np.random.default_rng(5)
    codes = np.repeat(np.arange(3), 2)
    reps = []
    for _ in range(300):
        wts = np.bincount(rng.integers(0, 3, 3), minlength=3)[codes]
        reps.append(wts @ hand[:, 1] / wts.sum())
    low, high = np.quantile(reps, [0.025, 0.975])
    assert (got["heat_in_box"]["low"], got["heat_in_box"]["high"]) == (pytest.approx(low, abs=1e-4),
                                                                       pytest.approx(high, abs=1e-4))
    # Baselines: the flat map's pointing game is the box's area share, film by film.
    assert res["baselines"]["flat"]["pointing"]["point"] == pytest.approx(256 / 96**2, abs=1e-4)
    assert got["pointing"]["better_than_chance"] and got["heat_in_box"]["better_than_chance"]
    assert res["verdicts"]["gradcam"] == "Grad-CAM: better than every chance baseline on every measure"
    table = pd.read_csv(out / "localisation.csv")
    assert len(table) == 6 * 4 and set(table["map"]) == {"gradcam", "flat", "centre", "prior"}


def test_maps_off_the_boxes_are_said_not_better_than_chance(case, tmp_path, capsys):
    import medtl

    run, work = case
    res = medtl.localise(run, work / "far.csv", out=tmp_path / "far", method="gradcam", n_boot=200)
    g = res["methods"]["gradcam"]
    assert g["pointing"]["point"] == 0.0 and not g["pointing"]["better_than_chance"]
    words = "the maps do not point at the annotated findings; the model may rely on other cues"
    assert res["verdicts"]["gradcam"].startswith("Grad-CAM: not better than chance on pointing game 0.000")
    assert res["verdicts"]["gradcam"].endswith(words)
    from medtl.explain.localise import format_localisation

    assert words in format_localisation(res)


@pytest.mark.filterwarnings("ignore:.*gallery case")  # the fixture run's films are elsewhere
def test_report_has_the_section_only_when_annotations_are_configured(case, tmp_path):
    import yaml

    from medtl.explain.localise import localise_run
    from medtl.report.html import write_report

    src, work = case
    run = tmp_path / "run"
    shutil.copytree(src, run)
    plain = write_report(run, tmp_path / "plain.html", compute_cams=False).read_text()
    assert "Do the maps point at the findings?" not in plain
    raw = yaml.safe_load((run / "config.yaml").read_text())
    raw["data"]["annotations"] = str(work / "far.csv")
    (run / "config.yaml").write_text(yaml.safe_dump(raw))
    res = localise_run(run, work / "far.csv", run / "localisation", methods=["gradcam"], n_boot=200)
    html = write_report(run, tmp_path / "r.html", compute_cams=False).read_text()
    assert "Do the maps point at the findings?" in html
    assert res["verdicts"]["gradcam"].replace("&", "&amp;") in html  # the console's and the JSON's words


@pytest.mark.filterwarnings("ignore:.*gallery case")  # the fixture run's films are elsewhere
def test_annotations_option_reaches_the_reports_localisation(case, tmp_path, monkeypatch, capsys):
    """``medtl report --annotations CSV`` scores that CSV in place of data.annotations: a stored
    result is shown only when it was scored against the same CSV, else made again with the maps;
    ``medtl localise`` takes the CSV as ``--annotations`` too, or the run's data.annotations."""
    import yaml

    import medtl.explain.localise as localise
    from medtl.cli import main
    from medtl.report.html import write_report

    src, work = case
    run = tmp_path / "run"
    shutil.copytree(src, run)
    far, near = str(work / "far.csv"), str(work / "boxes.csv")
    title = "Do the maps point at the findings?"

    def report(*extra: str) -> str:
        main(["report", str(run), "--out", str(tmp_path / "r.html"), "--no-cams", *extra])  # 1: films elsewhere
        return (tmp_path / "r.html").read_text()

    assert main(["localise", str(run), "--annotations", far, "--out", str(run / "localisation"),
                 "--method", "gradcam", "--bootstrap", "200"]) == 0
    verdict = json.loads((run / "localisation" / "localisation.json").read_text())["verdicts"]["gradcam"]
    assert title not in report()  # the config sets no data.annotations
    page = report("--annotations", far)
    assert title in page and verdict.replace("&", "&amp;") in page
    assert title not in report("--annotations", near)  # scored against another CSV; no maps to redo it

    # With maps, the report scores the CSV it is given (and stores it for the next report).
    calls = []
    real = localise.localise_run

    def spy(run_or_model, annotations, out_dir, **kwargs):
        calls.append(str(annotations))
        return real(run_or_model, annotations, out_dir, methods=["gradcam"], n_boot=200)

    monkeypatch.setattr(localise, "localise_run", spy)
    page = write_report(run, tmp_path / "cams.html", compute_cams=True, annotations=near).read_text()
    assert calls == [near] and title in page
    assert "Grad-CAM: better than every chance baseline on every measure" in page
    assert title in report("--annotations", near) and calls == [near]  # read back, not made again

    # medtl localise: no CSV and no data.annotations is an error that says what to pass; with
    # data.annotations set, the CSV may be left out.
    capsys.readouterr()
    assert main(["localise", str(run), "--out", str(tmp_path / "none"), "--method", "gradcam"]) == 1
    assert "sets no data.annotations; pass a CSV of boxes or masks" in capsys.readouterr().err
    assert main(["localise", str(run), near, "--annotations", far, "--out", str(tmp_path / "two")]) == 1
    assert "given twice" in capsys.readouterr().err
    raw = yaml.safe_load((run / "config.yaml").read_text())
    raw["data"]["annotations"] = far
    (run / "config.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setattr(localise, "localise_run", real)
    assert main(["localise", str(run), "--out", str(tmp_path / "cfg"), "--method", "gradcam",
                 "--bootstrap", "200"]) == 0
    assert json.loads((tmp_path / "cfg" / "localisation.json").read_text())["verdicts"]["gradcam"] == verdict


def test_binary_runs_ignore_the_label_column(case, tmp_path):
    """A binary run scores every row of a film whatever its label, exactly as without one; its
    outputs gain none of the per-class keys or columns of a multiclass run."""
    import medtl

    run, work = case
    boxes = pd.read_csv(work / "boxes.csv")
    boxes.assign(label=["mass", "nodule"] * 4).to_csv(work / "labelled.csv", index=False)
    a = medtl.localise(run, work / "boxes.csv", out=tmp_path / "a", method="gradcam", n_boot=100)
    b = medtl.localise(run, work / "labelled.csv", out=tmp_path / "b", method="gradcam", n_boot=100)
    assert a["settings"].pop("annotations_sha256") != b["settings"].pop("annotations_sha256")
    assert a == b and set(a) == {"counts", "settings", "methods", "baselines", "verdicts"}
    assert set(a["counts"]) == {"annotated", "unreadable", "scored", "annotated_not_called_positive", "patients"}
    assert (tmp_path / "a" / "localisation.csv").read_bytes() == (tmp_path / "b" / "localisation.csv").read_bytes()
    assert pd.read_csv(tmp_path / "a" / "localisation.csv").columns.tolist() == [
        "file", "patient", "map", "kind", "pointing", "heat_in_box", "iou", "iobb", "iou_hit", "iobb_hit"]
