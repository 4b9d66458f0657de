"""``medtl localise`` on multiclass and multilabel runs (issue 21): each box is scored against the
map of the class its ``label`` names, for the films the run calls that class, with figures per
class and over all (film, class) pairs.

The runs are the old training-run fixture with a model whose evidence is known: channel 0 is
the film above 0.75 (a bright spot), channel 1 the film below 0.25 (a dark spot), on a mid-grey
film; class "bright" reads channel 0 only and class "dark" channel 1 only, so a class's map
peaks on its own spot and nowhere else."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from tests.explain.test_files import _known_answer_model
from tests.explain.test_localise import FIXTURE

# film: (bright spot, dark spot), each (row, column, sigma) or None; 96x96, background 128.
FILMS = {
    "f0": ((20, 24, 8), None),
    "f1": ((70, 30, 8), None),
    "f2": (None, (30, 70, 8)),
    "f3": (None, (75, 75, 8)),
    "f4": (None, None),
    "f5": ((48, 15, 10), (15, 60, 8)),  # the bright spot is larger: multiclass calls it bright
}
PATIENTS = {"f0": "P0", "f1": "P0", "f2": "P1", "f3": "P1", "f4": "P2", "f5": "P2"}
FLAT = 256 / 96**2  # a 16x16 box's share of the film: the flat map's pointing game


def _box(r: int, c: int) -> dict:
    return {"x": c - 8, "y": r - 8, "w": 16, "h": 16}


def _far(r: int, c: int) -> dict:
    """A 16x16 box in the opposite corner, away from the spot."""
    return {"x": int(np.clip(95 - c - 24, 0, 80)), "y": int(np.clip(95 - r - 24, 0, 80)), "w": 16, "h": 16}


def _run(src: Path, dst: Path, task: str, classes: list[str], activation: str, head_w, head_b,
         threshold=None) -> Path:
    shutil.copytree(src, dst)
    (dst / "postprocess.json").unlink()  # model_info.json decides: arg-max, or its thresholds
    info = json.loads((dst / "model_info.json").read_text())
    info.update(task=task, classes=classes, n_outputs=len(classes), score_columns=[f"score_{c}" for c in classes],
                threshold=threshold, threshold_rule="test")
    (dst / "model_info.json").write_text(json.dumps(info))
    raw = yaml.safe_load((dst / "config.yaml").read_text())
    raw["task"], raw["data"]["classes"] = task, classes
    if task == "multiclass":
        raw["train"]["loss"]["name"] = "cce"
    (dst / "config.yaml").write_text(yaml.safe_dump(raw))
    _known_answer_model(32, [1.0, -1.0], [-0.75, 0.25], head_w, head_b, activation).save(dst / "model.keras")
    return dst


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A multiclass run (normal, bright, dark), a multilabel run (bright, dark) and the films.

    boxes.csv: bright boxes on the bright spots (f0, f1, f5), dark boxes away from the dark
    spots (f2, f3) but on f5's, and a bright box on the plain film f4 (called normal)."""
    work = tmp_path_factory.mktemp("localise_multi")
    yy, xx = np.mgrid[0:96, 0:96]
    rows = []

    def spot(s):
        return 0 * yy if s is None else np.exp(-((yy - s[0]) ** 2 + (xx - s[1]) ** 2) / (2 * s[2] ** 2))

    for name, (bright, dark) in FILMS.items():
        film = 128 + 127 * spot(bright) - 128 * spot(dark)
        Image.fromarray(np.clip(np.round(film), 0, 255).astype(np.uint8)).save(work / f"{name}.png")
        where = {"file": f"{name}.png", "patient_id": PATIENTS[name]}
        if bright:
            rows.append({**where, **_box(*bright[:2]), "label": "bright"})
        if dark:
            rows.append({**where, **(_box if name == "f5" else _far)(*dark[:2]), "label": "dark"})
    rows.append({"file": "f4.png", "patient_id": "P2", **_box(40, 40), "label": "bright"})
    pd.DataFrame(rows).to_csv(work / "boxes.csv", index=False)
    multi = _run(FIXTURE, work / "multiclass", "multiclass", ["normal", "bright", "dark"], "softmax",
                 [[0.0, 3000.0, 0.0], [0.0, 0.0, 3000.0]], [0.0, -3.0, -3.0])
    ml = _run(FIXTURE, work / "multilabel", "multilabel", ["bright", "dark"], "sigmoid",
              [[3000.0, 0.0], [0.0, 3000.0]], [-3.0, -3.0], threshold=[0.5, 0.5])
    return multi, ml, work


def _bootstrap(values, groups, n_boot, seed):
    """The patient-bootstrap interval of a mean, written from scratch (patients coded in order)."""
    codes = np.unique(groups, return_inverse=True)[1]
    k = codes.max() + 1
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(n_boot):
        w = np.bincount(rng.integers(0, k, k), minlength=k)[codes]
        reps.append(w @ np.asarray(values, float) / w.sum())
    return np.quantile(reps, [0.025, 0.975])


def test_multiclass_scores_each_box_against_its_class_map(case, tmp_path, capsys):
    from medtl.cli import main
    from medtl.explain.files import maps_for_files

    multi, _, work = case
    out = tmp_path / "loc"
    assert main(["localise", str(multi), str(work / "boxes.csv"), "--out", str(out), "--method", "gradcam",
                 "--bootstrap", "300", "--seed", "5"]) == 0
    text = capsys.readouterr().out
    res = json.loads((out / "localisation.json").read_text())

    # Called: f0, f1, f5 bright (f4 normal), f2, f3 dark; f5's dark box is not scored (called bright).
    assert res["counts"] == {"annotated": 6, "unreadable": 0, "scored": 5, "annotated_not_called_positive": 2,
                             "patients": 3, "pairs": 7, "scored_films": 5}
    bright, dark = res["classes"]["bright"], res["classes"]["dark"]
    assert list(res["classes"]) == ["bright", "dark"]
    assert bright["counts"] == {"annotated": 4, "unreadable": 0, "scored": 3, "annotated_not_called_positive": 1,
                                "patients": 2}
    assert dark["counts"] == {"annotated": 3, "unreadable": 0, "scored": 2, "annotated_not_called_positive": 1,
                              "patients": 1}
    assert res["settings"]["task"] == "multiclass" and res["settings"]["classes"] == ["normal", "bright", "dark"]

    # Each class's map peaks on its own spot: on the bright boxes, away from the dark ones.
    assert bright["methods"]["gradcam"]["pointing"] == {**bright["methods"]["gradcam"]["pointing"],
                                                        "point": 1.0, "low": 1.0, "high": 1.0}
    assert dark["methods"]["gradcam"]["pointing"]["point"] == 0.0
    assert bright["methods"]["gradcam"]["pointing"]["better_than_chance"]
    assert not dark["methods"]["gradcam"]["pointing"]["better_than_chance"]
    assert bright["verdicts"]["gradcam"] == "Grad-CAM (bright): better than every chance baseline on every measure"
    assert dark["verdicts"]["gradcam"].startswith("Grad-CAM (dark): not better than chance on pointing game 0.000")
    for c in ("bright", "dark"):
        assert res["classes"][c]["baselines"]["flat"]["pointing"]["point"] == pytest.approx(FLAT, abs=1e-4)

    # Overall: the five pairs, pointing 1, 1, 0, 0, 1 (CSV order), patients P0 P0 P1 P1 P2.
    g = res["methods"]["gradcam"]
    assert g["pointing"]["point"] == pytest.approx(0.6)
    low, high = _bootstrap([1, 1, 0, 0, 1], ["P0", "P0", "P1", "P1", "P2"], 300, 5)
    assert (g["pointing"]["low"], g["pointing"]["high"]) == (pytest.approx(low), pytest.approx(high))
    assert res["verdicts"]["gradcam"].startswith("Grad-CAM (all classes): ")

    table = pd.read_csv(out / "localisation.csv")
    assert list(table.columns[:4]) == ["file", "patient", "class", "map"]
    gc = table[table["map"] == "gradcam"]
    assert [Path(f).stem for f in gc["file"]] == ["f0", "f1", "f2", "f3", "f5"]
    assert gc["class"].tolist() == ["bright", "bright", "dark", "dark", "bright"]
    assert gc["pointing"].tolist() == [1.0, 1.0, 0.0, 0.0, 1.0]
    for c in ("bright", "dark"):  # per-class figures are the means of that class's rows
        assert res["classes"][c]["methods"]["gradcam"]["heat_in_box"]["point"] == pytest.approx(
            gc.loc[gc["class"] == c, "heat_in_box"].mean(), abs=1e-4)
    # The dark class's prior is learnt from the other dark film only: f2's prior is f3's far box.
    prior = table[(table["map"] == "prior") & (table["class"] == "dark")]
    assert prior["pointing"].tolist() == [0.0, 0.0]

    # The bright map is the model's map for class bright, as medtl explain draws it.
    f5 = str(work / "f5.png")
    want = maps_for_files(multi, [f5], method="gradcam", class_name="bright").maps[f5]
    assert np.unravel_index(np.argmax(want), want.shape) == pytest.approx((48, 15), abs=4)

    assert text.splitlines()[0] == ("scored 5 (film, class) pairs the run calls, of 7 annotated (2 not called), "
                                    "5 films, 3 patients")
    assert "class bright: scored 3 annotated films called bright (1 not called), 2 patients" in text
    assert "Grad-CAM (dark): not better than chance" in text


def test_multilabel_scores_a_film_once_per_called_label(case, tmp_path):
    import medtl

    _, ml, work = case
    res = medtl.localise(ml, work / "boxes.csv", out=tmp_path / "ml", method="gradcam", n_boot=200)
    # f5 has both spots: both labels are called, so it is scored for each, on its own box.
    assert res["counts"]["scored"] == 6 and res["counts"]["scored_films"] == 5
    assert res["counts"]["annotated_not_called_positive"] == 1  # f4's bright box: no label called
    assert res["classes"]["bright"]["methods"]["gradcam"]["pointing"]["point"] == 1.0
    assert res["classes"]["dark"]["methods"]["gradcam"]["pointing"]["point"] == pytest.approx(1 / 3, abs=1e-4)
    assert res["methods"]["gradcam"]["pointing"]["point"] == pytest.approx(4 / 6, abs=1e-4)
    assert res["settings"]["called"] == "the label's score is at or above its threshold"
    table = pd.read_csv(tmp_path / "ml" / "localisation.csv")
    f5 = table[(table["map"] == "gradcam") & table["file"].str.endswith("f5.png")]
    assert f5["class"].tolist() == ["bright", "dark"] and f5["pointing"].tolist() == [1.0, 1.0]


def test_labels_must_name_the_runs_classes(case, tmp_path):
    import medtl

    multi, _, work = case
    boxes = pd.read_csv(work / "boxes.csv")
    boxes.assign(label=boxes["label"].replace({"dark": "Dark"})).to_csv(work / "unknown.csv", index=False)
    with pytest.raises(ValueError) as err:
        medtl.localise(multi, work / "unknown.csv", out=tmp_path / "u")
    msg = str(err.value)
    assert "\n" not in msg and "unknown.csv row 3, column label: 'Dark' is not a class of the run" in msg
    assert msg.endswith("its classes are normal, bright, dark")

    boxes.drop(columns=["label"]).to_csv(work / "nolabel.csv", index=False)
    with pytest.raises(ValueError) as err:
        medtl.localise(multi, work / "nolabel.csv", out=tmp_path / "n")
    msg = str(err.value)
    assert "\n" not in msg and "nolabel.csv: 7 annotation row(s) have no label (first: " in msg
    assert "is a multiclass run: add a label column naming the class of each box (one of normal, bright, dark)" in msg
    assert not (tmp_path / "u").exists() and not (tmp_path / "n").exists()



@pytest.mark.filterwarnings("ignore:.*gallery case")  # the fixture run's films are elsewhere
def test_report_shows_the_figures_per_class(case, tmp_path):
    from medtl.explain.localise import localise_run
    from medtl.report.html import write_report

    src, _, work = case
    run = tmp_path / "run"
    shutil.copytree(src, run)
    val = pd.read_csv(run / "val_predictions.csv").drop(columns=["score"])
    scores = np.random.default_rng(0).dirichlet([1.0, 1.0, 1.0], len(val))
    val.assign(label=np.arange(len(val)) % 3, **{f"score_{c}": scores[:, i] for i, c in
                                                 enumerate(["normal", "bright", "dark"])}).to_csv(
        run / "val_predictions.csv", index=False)
    raw = yaml.safe_load((run / "config.yaml").read_text())
    raw["data"]["annotations"] = str(work / "boxes.csv")
    (run / "config.yaml").write_text(yaml.safe_dump(raw))
    res = localise_run(run, work / "boxes.csv", run / "localisation", methods=["gradcam"], n_boot=100)
    html = write_report(run, tmp_path / "r.html", compute_cams=False).read_text()
    assert "Do the maps point at the findings?" in html
    assert "Maps of the 5 annotated (film, class) pairs whose class the model calls" in html
    assert "<h3>Class bright</h3>" in html and "<h3>Class dark</h3>" in html
    for words in (res["verdicts"]["gradcam"], *(p["verdicts"]["gradcam"] for p in res["classes"].values())):
        assert words.replace("&", "&amp;") in html
    card = json.loads((run / "model_card.json").read_text())["localisation"]
    assert card["methods"]["gradcam"]["pointing"] == res["methods"]["gradcam"]["pointing"]
    assert card["classes"]["dark"]["methods"]["gradcam"]["pointing"]["point"] == 0.0
