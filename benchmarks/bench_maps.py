"""Which map to trust: faithfulness, localisation and speed of every heat-map method.

On a model trained on the synthetic sample data (the demo config, as tests/explain/
test_localisation.py trains it) and held-out films of new patients with a lesion at a known
place, prints per method (and per target layer or LayerCAM fusion): deletion AUC and insertion
AUC with 95% bootstrap intervals over films, the random-map baseline, maps per second, and two
localisation scores on the true positives: the lesion centre inside the hot region (map >= half
its peak) and the map's peak inside the lesion (pointing).

Run:
    python benchmarks/bench_maps.py                      # trains the model (~2 min on 2 CPUs)
    python benchmarks/bench_maps.py --run RUN_DIR --held-out HELD_OUT/labels.csv
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from medtl.tfimport import import_tensorflow  # noqa: E402

import_tensorflow()  # without TensorFlow's C++ start-up lines, as the medtl command

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from medtl.config import load_config  # noqa: E402
from medtl.data.pipeline import ImagePipeline  # noqa: E402
from medtl.data.synthetic import make_sample_data  # noqa: E402
from medtl.explain.faithfulness import faithfulness  # noqa: E402
from medtl.explain.files import maps_for_files  # noqa: E402
from medtl.models.classifier import load_model  # noqa: E402
from medtl.run.predictor import Predictor, predict_paths  # noqa: E402
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


def _localisation(run: Path, paths: list[str], rows: pd.DataFrame, method: str, layer) -> tuple[float, float]:
    fm = maps_for_files(run, paths, method=method, target_layer=layer)
    hot, point = [], []
    for p, (_, r) in zip(paths, rows.iterrows()):
        m = fm.maps[p]
        hot.append(m[int(r["lesion_y"]), int(r["lesion_x"])] >= 0.5 * m.max())
        y, x = np.unravel_index(int(np.argmax(m)), m.shape)
        point.append((x - r["lesion_x"]) ** 2 + (y - r["lesion_y"]) ** 2 <= r["lesion_r"] ** 2)
    return float(np.mean(hot)), float(np.mean(point))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, help="a trained run folder (default: train one)")
    ap.add_argument("--held-out", type=Path, help="labels.csv of held-out synthetic films")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
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
          f"{'maps/s':>7} {'hot':>5} {'point':>5}")
    random_line = None
    for label, method, opts in VARIANTS:
        res = faithfulness(model, x, [method], steps=args.steps, seed=args.seed,
                           groups=pos["patient_id"].tolist(), options={method: opts})
        e = res["methods"][method]
        hot, point = _localisation(args.run, paths, pos, method, opts.get("target_layer"))

        def iv(d: dict) -> str:
            return f"{d['point']:.3f} ({d['low']:.3f}-{d['high']:.3f})"

        print(f"{label:<20} {'x'.join(map(str, e['grid'])):>7} {iv(e['deletion']):>24} "
              f"{iv(e['insertion']):>24} {e['maps_per_second']:7.1f} {hot:5.0%} {point:5.0%}")
        random_line = res["random"]
    r = random_line
    print(f"{'random map':<20} {'':>7} {r['deletion']['point']:>24.3f} {r['insertion']['point']:>24.3f}")


if __name__ == "__main__":
    main()
