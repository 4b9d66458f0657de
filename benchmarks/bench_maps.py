"""Which map to trust: faithfulness, localisation and speed of every heat-map method.

On a model trained on the synthetic sample data (the demo config, as tests/explain/
test_localisation.py trains it) and held-out films of new patients with a lesion at a known
place, prints per method (and per target layer or LayerCAM fusion): deletion AUC and insertion
AUC with 95% bootstrap intervals over films, the random-map baseline, maps per second, and two
localisation scores on the true positives: the lesion centre inside the hot region (map >= half
its peak), and the pointing game and heat in box (the map's share inside the lesion's disc) as
:mod:`medtl.stats.localisation` scores them.

With ``--source kermany``: real anatomy around a known answer. NORMAL films of the Kermany
training split (../shared/data/kermany-pneumonia-224; whole patients, seeded) get a soft-edged,
textured elliptical opacity blended into a lung field of half of them, at a recorded box; those
are labelled 1. The films, a labels CSV and a boxes CSV (file, x, y, w, h in the film's pixels)
go to a temporary folder; the settings ``medtl init`` writes are trained at CPU size (MobileNetV2
from ../shared, ``--size`` px, ``--max-epochs`` per stage) on some patients, and every registered
method is scored on the others' positives with medtl's own code: ``medtl localise``'s
(:func:`medtl.explain.localise.localise_run`: pointing game, heat in box, chance baselines,
patient-bootstrap intervals) and the report's faithfulness (:func:`medtl.explain.files.
faithfulness_for_files`: deletion / insertion AUC against a random map, maps per second). One
JSON line per method, then a markdown table.

Run:
    python benchmarks/bench_maps.py                      # trains the model (~2 min on 2 CPUs)
    python benchmarks/bench_maps.py --run RUN_DIR --held-out HELD_OUT/labels.csv
    python benchmarks/bench_maps.py --source kermany   # ~13 min on 2 shared CPUs, most of it Score-CAM
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from medtl.tfimport import import_tensorflow  # noqa: E402

import_tensorflow()  # without TensorFlow's C++ start-up lines, as the medtl command

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402
from scipy.ndimage import gaussian_filter  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _kermany import (  # noqa: E402
    add_input_args, check_inputs, init_overrides, kermany_table, sample_patients, write_labels,
)

from medtl.config import load_config  # noqa: E402
from medtl.data.pipeline import ImagePipeline  # noqa: E402
from medtl.data.synthetic import make_sample_data  # noqa: E402
from medtl.explain.faithfulness import faithfulness  # noqa: E402
from medtl.explain.files import faithfulness_for_files, maps_for_files  # noqa: E402
from medtl.explain.localise import localise_run  # noqa: E402
from medtl.init import write_starter_config  # noqa: E402
from medtl.models.classifier import load_model  # noqa: E402
from medtl.registry import map_methods  # noqa: E402
from medtl.run.predictor import Predictor, predict_paths  # noqa: E402
from medtl.stats.localisation import BASELINE_LABELS, heat_in_box, pointing_game  # noqa: E402
from medtl.train.trainer import train  # noqa: E402

# (label, method, options): the smallcnn's last map is cnn_block4_relu2 (16x16 at 128 px).
VARIANTS = [
    ("gradcam", "gradcam", {}),
    ("gradcam@block3", "gradcam", {"target_layer": "cnn_block3_relu2"}),
    ("gradcam++", "gradcam++", {}),
    ("hirescam", "hirescam", {}),
    ("layercam", "layercam", {}),
    ("layercam@block3", "layercam", {"target_layer": "cnn_block3_relu2"}),
    ("layercam fused 3+4", "layercam", {"target_layer": ["cnn_block4_relu2", "cnn_block3_relu2"]}),
    ("intgrad", "intgrad", {}),
    ("scorecam", "scorecam", {}),
    ("occlusion", "occlusion", {}),
]


def _trained(work: Path) -> tuple[Path, Path]:
    csv = make_sample_data(work / "data", n_patients=40, seed=11)
    cfg = load_config("configs/demo.yaml", overrides=[
        f"data.manifest={csv}", f"data.cache_dir={work / 'cache'}", f"output_dir={work / 'runs'}",
        "data.val_fraction=0.25", "train.stages.0.epochs=16"])
    run = train(cfg, progress=False).run_dir
    return run, make_sample_data(work / "held-out", n_patients=30, seed=99, prevalence=0.5)


def _localisation(run: Path, paths: list[str], rows: pd.DataFrame, method: str, layer
                  ) -> tuple[float, float, float]:
    """Shares of films: lesion centre in the hot region; and, scored by medtl's own
    :mod:`medtl.stats.localisation` against the lesion's disc, pointing game and heat in box."""
    fm = maps_for_files(run, paths, method=method, target_layer=layer)
    hot, point, heat = [], [], []
    for p, (_, r) in zip(paths, rows.iterrows()):
        m = fm.maps[p]
        hot.append(m[int(r["lesion_y"]), int(r["lesion_x"])] >= 0.5 * m.max())
        yy, xx = np.mgrid[0:m.shape[0], 0:m.shape[1]]
        disc = (xx - r["lesion_x"]) ** 2 + (yy - r["lesion_y"]) ** 2 <= r["lesion_r"] ** 2
        point.append(pointing_game(m, disc))
        heat.append(heat_in_box(m, disc))
    return float(np.mean(hot)), float(np.mean(point)), float(np.mean(heat))


def _opacity(shape: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A smooth, textured elliptical opacity in a lung field of a frontal chest film.

    Returns its weight (H, W) in [0, 1] and its box (x, y, w, h) in pixels: the bounding box of
    the pixels whose untextured weight is at least 0.5 (the soft edge falls off around it).
    """
    h, w = shape
    cx = w * (rng.choice([0.31, 0.69]) + rng.uniform(-0.07, 0.07))  # the film's left or right lung
    cy = h * rng.uniform(0.35, 0.68)
    ax, ay = w * rng.uniform(0.06, 0.11), h * rng.uniform(0.07, 0.13)
    c, s = np.cos(t := rng.uniform(-0.5, 0.5)), np.sin(t)
    yy, xx = np.mgrid[0:h, 0:w] + 0.5  # pixel centres
    r = np.hypot(((xx - cx) * c + (yy - cy) * s) / ax, (-(xx - cx) * s + (yy - cy) * c) / ay)
    weight = 1.0 / (1.0 + np.exp((r - 1.0) / 0.12))
    texture = gaussian_filter(rng.standard_normal(shape), 2.0)
    rows, cols = np.nonzero(weight >= 0.5)
    box = (int(cols.min()), int(rows.min()), int(cols.max() + 1 - cols.min()), int(rows.max() + 1 - rows.min()))
    return np.clip(weight * (1.0 + 0.35 * texture / texture.std()), 0.0, 1.0), box


def _kermany_films(args: argparse.Namespace, work: Path) -> tuple[Path, Path, Path]:
    """NORMAL Kermany films (whole patients), an opacity blended into half of them (label 1) at
    a recorded box, written as PNG to ``work``; patients split into training and held-out.
    Returns the training labels CSV, the held-out labels CSV and the boxes CSV of the first
    ``--score-films`` held-out positives (Score-CAM costs a forward pass per channel)."""
    df = kermany_table(args.data)
    normal = df[df["label"] == 0].reset_index(drop=True)
    rows = normal.iloc[sample_patients(normal["label"], normal["patient"], args.films, args.seed)]
    rng = np.random.default_rng(args.seed)
    patients = pd.unique(rows["patient"])
    held = set(rng.choice(patients, size=max(2, round(args.held_out_share * len(patients))), replace=False))
    lesion = rng.permutation(len(rows)) < len(rows) // 2
    (work / "films").mkdir(parents=True, exist_ok=True)
    out, boxes = [], []
    for i, (f, patient) in enumerate(zip(rows["file"], rows["patient"])):
        film = np.asarray(Image.open(f).convert("L"), np.float64) / 255.0
        name = work / "films" / f"film{i:04d}.png"  # every film re-encoded alike: PNG, 8 bits
        if lesion[i]:
            weight, (x, y, w, h) = _opacity(film.shape, rng)
            film = film + rng.uniform(0.3, 0.5) * weight * (1.0 - film)
            boxes.append({"file": str(name), "x": x, "y": y, "w": w, "h": h, "patient_id": patient,
                          "held_out": patient in held})
        Image.fromarray(np.round(255.0 * film).astype(np.uint8)).save(name)
        out.append({"file": str(name), "label": int(lesion[i]), "patient": patient, "held_out": patient in held})
    films = pd.DataFrame(out)
    train_csv = write_labels(films[~films["held_out"]], work / "train")
    held_csv = write_labels(films[films["held_out"]], work / "held-out")
    b = pd.DataFrame(boxes)
    b[b["held_out"]].head(args.score_films).drop(columns="held_out").to_csv(work / "held-out" / "boxes.csv",
                                                                              index=False)
    return train_csv, held_csv, work / "held-out" / "boxes.csv"


def _ends(d: dict) -> dict:
    return {k: round(float(d[k]), 4) for k in ("point", "low", "high")}


def _cell(d: dict | None, bold: bool = False) -> str:
    if not d or d.get("point") is None:
        return "–"
    text = f"{d['point']:.3f} [{d['low']:.3f}, {d['high']:.3f}]"
    return f"**{text}**" if bold else text


def _kermany(args: argparse.Namespace) -> None:
    """The Kermany mode: films, training, scoring; JSON lines and a markdown table."""
    check_inputs(args.data, args.weights)
    t0 = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_maps_kermany_"))
    train_csv, held_csv, boxes_csv = _kermany_films(args, work)
    cfg_path = write_starter_config(train_csv, work / "config.yaml", force=True)
    overrides, stages = init_overrides(cfg_path, work, args.weights, args.size, args.max_epochs)
    run = train(load_config(cfg_path, overrides), run_dir=work / "run", progress=False).run_dir
    t_train = time.perf_counter() - t0
    methods = list(map_methods())
    loc = localise_run(run, boxes_csv, work / "localisation", methods=methods, n_boot=args.n_boot, seed=args.seed)
    scored = pd.read_csv(work / "localisation" / "localisation.csv")
    tps = scored[scored["map"] == methods[0]].head(args.faith_films)
    faith = faithfulness_for_files(run, tps["file"].tolist(), methods, groups=tps["patient"].astype(str).tolist(),
                                   steps=args.steps, n_boot=args.n_boot, seed=args.seed)
    held = pd.read_csv(held_csv)
    print(json.dumps({"setup": {
        "source": "kermany NORMAL films + synthetic opacity", "films": args.films,
        "train_films": int(len(pd.read_csv(train_csv))), "held_out_films": int(len(held)),
        "held_out_positives": int(held["label"].sum()), "size": args.size, "stages": stages,
        "counts": loc["counts"], "faithfulness_films": int(faith["n_films"]), "steps": args.steps,
        "n_boot": args.n_boot, "seed": args.seed, "train_seconds": round(t_train),
        "total_seconds": round(time.perf_counter() - t0), "work": str(work)}}), flush=True)
    rows = []
    for m in methods:
        L, F = loc["methods"][m], faith["methods"][m]
        line = {"source": "kermany", "method": m, "grid": "x".join(map(str, F["grid"])),
                **{k: L[k] for k in ("pointing", "heat_in_box")},
                **{k: _ends(F[k]) for k in ("deletion", "insertion", "deletion_vs_random", "insertion_vs_random")},
                "maps_per_second": round(F["maps_per_second"], 2), "localisation": loc["verdicts"][m],
                "faithfulness": F["verdict"]}
        print(json.dumps(line), flush=True)
        rows.append(f"| {F['label']} | {line['grid']} | {_cell(L['pointing'], L['pointing']['better_than_chance'])} "
                    f"| {_cell(L['heat_in_box'], L['heat_in_box']['better_than_chance'])} "
                    f"| {_cell(F['deletion'], F['deletion_vs_random']['high'] < 0)} "
                    f"| {_cell(F['insertion'], F['insertion_vs_random']['low'] > 0)} | {F['maps_per_second']:.1f} |")
    # Random maps: pixel-wise, and (where medtl draws them) on each method's own grid, which the
    # methods' bold deletion / insertion cells are compared with.
    chance = {**{BASELINE_LABELS[b]: v for b, v in loc["baselines"].items()}, "random map": faith["random"],
              **{f"random map on a {g} grid": v for g, v in faith.get("random_by_grid", {}).items()}}
    print(json.dumps({"source": "kermany", "chance": {
        k: {m: _ends(v[m]) for m in ("pointing", "heat_in_box", "deletion", "insertion") if m in v}
        for k, v in chance.items()}}), flush=True)
    rows += [f"| chance: {k} | | {_cell(v.get('pointing'))} | {_cell(v.get('heat_in_box'))} "
             f"| {_cell(v.get('deletion'))} | {_cell(v.get('insertion'))} | |" for k, v in chance.items()]
    print("\n| method | map grid | pointing game | heat in box | deletion AUC (lower is better) "
          "| insertion AUC (higher is better) | maps/s |\n|---|---|---|---|---|---|---|")
    print("\n".join(rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, help="a trained run folder (default: train one)")
    ap.add_argument("--held-out", type=Path, help="labels.csv of held-out synthetic films")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--source", choices=["sample", "kermany"], default="sample",
                    help="sample: synthetic sample-data lesions (default); kermany: real films with a "
                         "synthetic opacity at a known place")
    add_input_args(ap)
    ap.add_argument("--films", type=int, default=800, help="kermany: NORMAL films (whole patients) to use")
    ap.add_argument("--held-out-share", type=float, default=0.2,
                    help="kermany: share of the patients held out for scoring (default 0.2)")
    ap.add_argument("--size", type=int, default=128, help="kermany: input size in pixels")
    ap.add_argument("--max-epochs", type=int, default=10, help="kermany: cap on each init stage's epochs")
    ap.add_argument("--score-films", type=int, default=24,
                    help="kermany: held-out positives annotated and scored (Score-CAM: 1280 passes each)")
    ap.add_argument("--faith-films", type=int, default=20,
                    help="kermany: of those the model calls positive, films for deletion / insertion")
    ap.add_argument("--n-boot", type=int, default=1000, help="kermany: bootstrap replicates")
    ap.add_argument("--work", type=Path, help="kermany: keep films and run here (default: a temporary folder)")
    args = ap.parse_args()
    if args.source == "kermany":
        return _kermany(args)
    if args.run is None:
        args.run, args.held_out = _trained(Path(tempfile.mkdtemp(prefix="bench_maps_")))
    labels = pd.read_csv(args.held_out)
    root = args.held_out.parent
    pos = labels[labels["label"] == 1].reset_index(drop=True)
    paths = [str(root / f) for f in pos["file"]]
    keep = predict_paths(args.run, paths)["score"].to_numpy() >= 0.5
    paths, pos = [p for p, k in zip(paths, keep) if k], pos[keep]
    pipe = ImagePipeline(Predictor(args.run).pipeline_config())
    x = np.stack([pipe.load(p)[0] for p in paths])
    model = load_model(args.run / "model.keras")
    print(f"{len(paths)} held-out true positives, input {x.shape[1]}x{x.shape[2]}, "
          f"{args.steps} steps, blurred-film baseline")
    print(f"{'method':<20} {'grid':>7} {'deletion AUC (95% CI)':>24} {'insertion AUC (95% CI)':>24} "
          f"{'maps/s':>7} {'hot':>5} {'point':>5} {'heat':>5}")
    random_line = None
    for label, method, opts in VARIANTS:
        res = faithfulness(model, x, [method], steps=args.steps, seed=args.seed,
                           groups=pos["patient_id"].tolist(), options={method: opts})
        e = res["methods"][method]
        hot, point, heat = _localisation(args.run, paths, pos, method, opts.get("target_layer"))

        def iv(d: dict) -> str:
            return f"{d['point']:.3f} ({d['low']:.3f}-{d['high']:.3f})"

        print(f"{label:<20} {'x'.join(map(str, e['grid'])):>7} {iv(e['deletion']):>24} "
              f"{iv(e['insertion']):>24} {e['maps_per_second']:7.1f} {hot:5.0%} {point:5.0%} {heat:5.2f}")
        random_line = res["random"]
    r = random_line
    print(f"{'random map':<20} {'':>7} {r['deletion']['point']:>24.3f} {r['insertion']['point']:>24.3f}")


if __name__ == "__main__":
    main()
