"""medtl explain on files: overlays at the film's resolution from a trained run, via the CLI."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from medtl.config import config_from_dict
    from medtl.data.synthetic import make_sample_data
    from medtl.train.trainer import train

    work = tmp_path_factory.mktemp("explain_files")
    csv = make_sample_data(work / "data", n_patients=10, seed=5, image_size=(96, 80), prevalence=0.4)
    cfg = config_from_dict({
        "name": "explain", "seed": 3, "output_dir": str(work / "runs"),
        "data": {"manifest": str(csv), "patient_column": "patient_id", "image_size": [48, 48],
                 "cache_dir": str(work / "cache"), "val_fraction": 0.3, "workers": 1},
        "augment": {"preset": "none"},
        "model": {"backbone": "smallcnn", "weights": "none", "dropout": 0.0},
        "train": {"batch_size": 8, "stages": [{"unfreeze": "all", "epochs": 2, "lr": 1e-3}],
                  "mixed_precision": "off", "distribute": "none"},
        "report": {"cam": "gradcam"},
    })
    res = train(cfg, progress=False)
    return res.run_dir, pd.read_csv(csv), csv.parent


def test_maps_come_back_at_each_films_own_resolution(trained_run):
    from medtl.explain.files import maps_for_files
    from medtl.io import read_image

    run, labels, root = trained_run
    paths = [str(root / f) for f in labels["file"][:3]]
    fm = maps_for_files(run, paths, method="gradcam")
    assert fm.method == "gradcam" and not fm.errors
    for p in paths:
        film = read_image(p)
        assert fm.films[p].shape == film.shape == fm.maps[p].shape
        np.testing.assert_array_equal(fm.films[p], film)
        assert 0.0 <= fm.maps[p].min() and fm.maps[p].max() <= 1.0


def test_cli_explain_writes_overlays_and_lists_bad_files(trained_run, tmp_path, capsys):
    from medtl.cli import main

    run, labels, root = trained_run
    good = [str(root / f) for f in labels["file"][:2]]
    bad = tmp_path / "broken.dcm"
    bad.write_text("not a DICOM file")
    out = tmp_path / "cams"
    rc = main(["explain", str(run), *good, str(bad), "--out", str(out)])
    assert rc == 1  # an unreadable file is reported, never dropped silently
    df = pd.read_csv(out / "explanations.csv", keep_default_na=False)
    assert df["path"].tolist() == good + [str(bad)]
    assert df.loc[2, "error"] and "broken.dcm" in df.loc[2, "error"]
    from medtl.io import read_image

    for _, row in df.iloc[:2].iterrows():
        img = Image.open(out / row["png"])
        assert img.mode == "RGB"
        assert np.asarray(img).shape[:2] == read_image(row["path"]).shape  # the film's own size
        assert 0.0 <= float(row["score"]) <= 1.0 and row["method"] == "gradcam"
    err = capsys.readouterr().err
    assert "1 unreadable file" in err and "broken.dcm" in err  # names the file on the console too

    # A folder of PACS exports named by SOP Instance UID: none skipped. By default each PNG is
    # named by a salted hash of its input (a UID or a name is identifying); keep_names names it
    # after the whole file name.
    pacs = tmp_path / "pacs"
    pacs.mkdir()
    uid = "1.2.840.10008.99.850819"
    shutil.copy(good[0], pacs / uid)
    rc = main(["explain", str(run), str(pacs), "--out", str(tmp_path / "pp"), "--method", "gradcam++"])
    assert rc == 0
    df = pd.read_csv(tmp_path / "pp" / "explanations.csv", keep_default_na=False)
    assert df["png"].str.fullmatch(r"[0-9a-f]{12}_gradcampp\.png").all() and df["map_png"].tolist() == [""]
    assert not any("850819" in p.name for p in (tmp_path / "pp").iterdir())
    from medtl.explain.files import explain_paths

    df = explain_paths(run, [str(pacs / uid)], tmp_path / "kept", method="gradcam++", keep_names=True)
    assert df["png"].tolist() == [f"{uid}_gradcampp.png"]


def test_occlusion_patch_and_stride_reach_the_maps(trained_run, tmp_path, capsys):
    from medtl.cli import main
    from medtl.data.pipeline import ImagePipeline
    from medtl.run.predictor import Predictor
    from medtl.explain.cam import compute_cam, explain_for_original
    from medtl.explain.files import maps_for_files
    from medtl.explain.overlay import read_map_png
    from medtl.models.classifier import load_model

    run, labels, root = trained_run
    path = str(root / labels["file"][0])
    out = tmp_path / "occ"
    args = ["explain", str(run), path, "--out", str(out), "--method", "occlusion", "--save-maps"]
    assert main([*args, "--patch", "0.25", "--stride", "0.0625"]) == 0
    got = read_map_png(out / pd.read_csv(out / "explanations.csv")["map_png"][0])
    x, geo = ImagePipeline(Predictor(run).pipeline_config()).load(path)
    model = load_model(run / "model.keras")
    want = explain_for_original(compute_cam(model, x[None], method="occlusion", patch=0.25, stride=0.0625)[0], geo)
    np.testing.assert_allclose(got, want, atol=2e-5)
    default = maps_for_files(run, [path], method="occlusion")
    assert np.abs(default.maps[path] - want).max() > 0.05  # the options changed the map
    assert default.reason.endswith("; patch 0.125, step 0.0625 of the image side")

    assert main([*args, "--stride", "0"]) == 1
    assert "--stride 0.0: expected a fraction of the image side" in capsys.readouterr().err
    assert main(["explain", str(run), path, "--out", str(out), "--patch", "0.2"]) == 1
    assert "patch/stride are for occlusion maps and the method is gradcam" in capsys.readouterr().err


def test_saved_maps_give_back_the_maps_at_the_films_resolution(trained_run, tmp_path):
    from medtl.cli import main
    from medtl.explain.files import maps_for_files
    from medtl.explain.overlay import read_map_png

    run, labels, root = trained_run
    paths = [str(root / f) for f in labels["file"][:2]]
    assert main(["explain", str(run), *paths, "--out", str(tmp_path / "cams"), "--save-maps"]) == 0
    df = pd.read_csv(tmp_path / "cams" / "explanations.csv", keep_default_na=False)
    fm = maps_for_files(run, paths, method="gradcam")
    for row in df.itertuples():
        assert row.map_png == row.png.replace(".png", "_map.png")
        back = read_map_png(tmp_path / "cams" / row.map_png)
        assert back.shape == fm.maps[row.path].shape
        np.testing.assert_allclose(back, fm.maps[row.path], atol=1 / 65535)
        assert back.max() > 0.5  # a real map, not an empty image


def _known_answer_model(size: int, kernel, bias, head_w, head_b, activation: str = "sigmoid"):
    """A classifier whose evidence is known: 1x1 convolutions of the grey film (repeated over
    RGB) with ReLU, seen through a 2x-pooled map as in a real backbone, then a dense head."""
    import keras

    bi = keras.Input((size, size, 3))
    k = np.asarray(kernel, np.float32)
    conv = keras.layers.Conv2D(len(k), 1, activation="relu", name="evidence")
    backbone = keras.Model(bi, keras.layers.AveragePooling2D(2, name="pool2")(conv(bi)), name="backbone")
    inp = keras.Input((size, size, 1), name="image")
    x = keras.layers.Concatenate()([inp, inp, inp])
    x = keras.layers.GlobalAveragePooling2D(name="pool")(backbone(x, training=False))
    head = keras.layers.Dense(len(head_b), activation=activation, name="classifier")
    model = keras.Model(inp, head(x))
    conv.set_weights([np.tile(k / 3, (3, 1))[None, None], np.asarray(bias, np.float32)])
    head.set_weights([np.asarray(head_w, np.float32), np.asarray(head_b, np.float32)])
    return model


def _bright_spot_model(size: int):
    """Known answer: the evidence for the positive class is wherever the film is near white
    (above 0.75)."""
    return _known_answer_model(size, [1.0], [-0.75], [[50.0]], [-1.0])


@pytest.mark.parametrize("shape, spot", [((120, 80), (30, 22)), ((80, 120), (58, 95)), ((100, 100), (50, 20))])
def test_map_peak_lands_on_the_planted_spot_of_a_letterboxed_film(trained_run, tmp_path, shape, spot):
    """End to end (file -> letterboxed canvas -> map -> film): with a model whose evidence is
    known, the map's peak must land on the spot in the film's own pixels, whatever the padding."""
    import shutil

    from medtl.explain.files import maps_for_files

    run, _, _ = trained_run
    known = tmp_path / "run"
    shutil.copytree(run, known)
    _bright_spot_model(48).save(known / "model.keras")
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    # A peaked spot (not a flat disc, whose map would be a plateau with no single peak)
    film = (40 + 215 * np.exp(-((yy - spot[0]) ** 2 + (xx - spot[1]) ** 2) / (2 * 8.0**2))).astype(np.uint8)
    path = tmp_path / "film.png"
    Image.fromarray(film).save(path)
    fm = maps_for_files(known, [str(path)], method="gradcam")
    m = fm.maps[str(path)]
    assert m.shape == shape
    r, c = np.unravel_index(int(np.argmax(m)), m.shape)
    assert np.hypot(r - spot[0], c - spot[1]) <= 4, (r, c)
    assert m[film < 100].max() < 0.5  # nothing of the evidence far from the spot


def _padding_model(size: int):
    """Known answer: the evidence is near-black film (below 0.25), which the letterbox padding is."""
    return _known_answer_model(size, [-1.0], [0.25], [[50.0]], [-1.0])


def test_heat_on_the_letterbox_padding_is_measured_and_said(trained_run, tmp_path, capsys):
    """The film-sized map crops the padding off, so heat there would vanish from the overlay
    unnoticed: explanations.csv gives its share and the console says when it is large."""
    from medtl.cli import main

    run, _, _ = trained_run
    known = tmp_path / "run"
    shutil.copytree(run, known)
    _padding_model(48).save(known / "model.keras")
    grey = tmp_path / "tall_grey.png"  # 120x60: a quarter of the canvas padded on each side
    Image.fromarray(np.full((120, 60), 128, np.uint8)).save(grey)
    square = tmp_path / "square.png"  # no padding, dark in its top half
    Image.fromarray(np.vstack([np.full((30, 60), 10), np.full((30, 60), 128)]).astype(np.uint8)).save(square)
    rc = main(["explain", str(known), str(grey), str(square), "--out", str(tmp_path / "cams")])
    assert rc == 0
    df = pd.read_csv(tmp_path / "cams" / "explanations.csv").set_index("path")
    assert df.loc[str(grey), "heat_off_film"] > 0.9  # all of it, up to the map's blur at the edge
    assert df.loc[str(square), "heat_off_film"] == 0.0
    from medtl.explain.files import maps_for_files

    assert maps_for_files(known, [grey, square]).padded == {str(grey): True, str(square): False}
    err = capsys.readouterr().err
    assert "1 of 2 maps put 25% or more of their heat on the letterbox padding" in err


def _bright_dark_model(size: int, w_bright: float, w_dark: float):
    """Two classes with known evidence: "bright" is near-white film, "dark" near-black film."""
    # channel 0 = relu(x - 0.75), channel 1 = relu(0.25 - x)
    return _known_answer_model(size, [1.0, -1.0], [-0.75, 0.25], np.diag([w_bright, w_dark]), [0.0, 0.0],
                               activation="softmax")


def test_ensemble_members_map_the_class_the_ensemble_predicts(trained_run, tmp_path, monkeypatch):
    """Two members that disagree on the top class must both map the ensemble's class: averaging a
    map of "bright" with a map of "dark" would explain neither. The map's class is reported."""
    import json
    import shutil

    import medtl.run.predictor as predictor_mod
    from medtl.explain.files import explain_paths, maps_for_files

    run, _, _ = trained_run
    members = []
    # Member 0 leans "bright" a little, member 1 "dark" a lot: together they say "dark".
    for i, (wb, wd) in enumerate([(800.0, 500.0), (500.0, 2000.0)]):
        d = tmp_path / f"member{i}"
        shutil.copytree(run, d)
        (d / "postprocess.json").unlink(missing_ok=True)
        info = json.loads((d / "model_info.json").read_text())
        info.update(task="multiclass", classes=["bright", "dark"], n_outputs=2,
                    score_columns=["score_bright", "score_dark"], threshold=None)
        (d / "model_info.json").write_text(json.dumps(info))
        _bright_dark_model(48, wb, wd).save(d / "model.keras")
        members.append(d)

    class TwoMembers(predictor_mod.Predictor):
        def __init__(self, run_or_model):
            super().__init__(members[0])
            self.members, self.folds, self.pps = members, [0, 1], [None, None]

    monkeypatch.setattr("medtl.explain.files.Predictor", TwoMembers)  # the name maps_for_files uses
    yy, xx = np.mgrid[0:96, 0:96]
    bright = np.exp(-((yy - 30) ** 2 + (xx - 30) ** 2) / (2 * 12.0**2))
    dark = np.exp(-((yy - 66) ** 2 + (xx - 66) ** 2) / (2 * 12.0**2))
    film = np.clip(np.round(127.5 + 127.5 * bright - 127.5 * dark), 0, 255).astype(np.uint8)
    path = tmp_path / "film.png"
    Image.fromarray(film).save(path)

    fm = maps_for_files(members[0], [str(path)], method="gradcam")
    p = str(path)
    per_member = fm.scores[["score_bright_fold0", "score_dark_fold1"]].iloc[0]
    assert per_member["score_bright_fold0"] > 0.5 and per_member["score_dark_fold1"] > 0.5  # they disagree
    assert fm.scores["prediction"].iloc[0] == "dark" and fm.classes[p] == "dark"
    m = fm.maps[p]
    assert np.unravel_index(int(np.argmax(m)), m.shape) == pytest.approx((66, 66), abs=3)
    assert m[bright > 0.5].max() < 0.1  # no evidence drawn at the bright spot

    df = explain_paths(members[0], [p], tmp_path / "cams", method="gradcam", class_name="bright")
    assert df.loc[0, "map_class"] == "bright"
    fm_b = maps_for_files(members[0], [p], method="gradcam", class_name="bright")
    assert m.shape == fm_b.maps[p].shape and fm_b.maps[p][dark > 0.5].max() < 0.1
    with pytest.raises(ValueError, match="class 'lesion': not a class of this model; choose one of bright, dark"):
        maps_for_files(members[0], [p], class_name="lesion")


def test_binary_maps_for_the_predicted_class_on_request(trained_run):
    from medtl.explain.files import maps_for_files

    run, labels, root = trained_run
    paths = [str(root / f) for f in labels["file"][:6]]
    fm = maps_for_files(run, paths, method="gradcam", class_name="predicted")
    assert [fm.classes[p] for p in paths] == fm.scores["prediction"].tolist()
    assert len(set(fm.classes.values())) == 2, fm.scores  # both kinds of decision are covered
    default = maps_for_files(run, paths, method="gradcam")
    from medtl.run.predictor import Predictor

    positive = Predictor(run).classes[1]
    assert set(default.classes.values()) == {positive}  # binary default: the positive class
    for name in set(fm.classes.values()):
        named = maps_for_files(run, paths, method="gradcam", class_name=name)
        for p in paths:
            if fm.classes[p] == name:
                np.testing.assert_allclose(fm.maps[p], named.maps[p], atol=1e-5)
