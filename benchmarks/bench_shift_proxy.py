"""A shift proxy for the external test (issue 19): Kermany films under realistic corruptions.

Trains the settings ``medtl init`` writes for a patient sample of the Kermany training split
(CPU overrides only: MobileNetV2 from ../shared, ``--size`` px, and ``--max-epochs`` per stage
so it fits a CPU), once per augmentation preset, and scores a patient-grouped holdout of
unseen patients clean and under 7 corruptions at 3 severities each (gamma, contrast, blur,
noise, JPEG quality, down-up-sampling, zoom/crop), each severity beyond the range the
``chest_xray_robust`` preset trains with. Thresholds come from the run's clean validation
split only. Levers scored on the same holdout: the preset, ``predict.tta`` (shift), the
threshold rule, and the linear probe (medtl.evaluate.probe) instead of fine-tuning; ``--variant``
adds training levers as config overrides (weight averaging, mixup, label smoothing, ...);
``--ensemble K`` the K-fold ensemble of ``medtl cv`` with its two threshold sources.

Prints one JSON line per lever: clean AUC and balanced accuracy, their means under shift, the
drop, and the minutes. Corruptions are applied to the model-size (letterboxed) image.

Example:
    python benchmarks/bench_shift_proxy.py --train 1000 --holdout 300 --size 128
    python benchmarks/bench_shift_proxy.py --presets '' --variant 'smooth:train.loss.label_smoothing=0.1' --no-probe
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _kermany import add_input_args, check_inputs, kermany_table, sample_patients, write_labels  # noqa: E402

RULES = ("youden", "youden-centre", "prevalence", "fixed:0.5")


def _gamma(x: np.ndarray, g: float) -> np.ndarray:
    return np.power(np.clip(x, 0, 1), g)


def _contrast(x: np.ndarray, c: float) -> np.ndarray:
    m = x.mean(axis=(1, 2, 3), keepdims=True)
    return np.clip(m + c * (x - m), 0, 1)


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    return np.stack([cv2.GaussianBlur(i, (0, 0), sigma).reshape(i.shape) for i in x])


def _noise(x: np.ndarray, std: float) -> np.ndarray:
    return np.clip(x + np.random.default_rng(0).normal(0, std, x.shape).astype(np.float32), 0, 1)


def _jpeg(x: np.ndarray, q: int) -> np.ndarray:
    out = []
    for i in x:
        buf = io.BytesIO()
        Image.fromarray((np.clip(i[..., 0], 0, 1) * 255).round().astype(np.uint8)).save(buf, "JPEG", quality=q)
        out.append(np.asarray(Image.open(buf), dtype=np.float32)[..., None] / 255.0)
    return np.stack(out)


def _downup(x: np.ndarray, f: float) -> np.ndarray:
    h, w = x.shape[1:3]
    small = (max(8, int(w * f)), max(8, int(h * f)))
    return np.stack([cv2.resize(cv2.resize(i, small, interpolation=cv2.INTER_AREA), (w, h),
                                interpolation=cv2.INTER_LINEAR).reshape(i.shape) for i in x])


def _zoom(x: np.ndarray, z: float) -> np.ndarray:
    h, w = x.shape[1:3]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), 0, z)
    return np.stack([cv2.warpAffine(i, m, (w, h), borderValue=0).reshape(i.shape) for i in x])


# Severities beyond the robust preset's training ranges (gamma 0.7-1.5, contrast +-0.2, blur
# kernel <= 5, noise std <= 0.04, JPEG >= 40, down-up >= 0.5x, zoom <= 1.15).
CORRUPTIONS = {
    "gamma": (_gamma, (1.7, 2.2, 2.8)),
    "contrast": (_contrast, (0.6, 0.45, 0.3)),
    "blur": (_blur, (1.5, 2.5, 3.5)),
    "noise": (_noise, (0.06, 0.09, 0.12)),
    "jpeg": (_jpeg, (25, 15, 8)),
    "downup": (_downup, (0.4, 0.3, 0.2)),
    "zoom": (_zoom, (1.2, 1.3, 1.4)),
}


def _metrics(y: np.ndarray, s: np.ndarray, t: float) -> tuple[float, float]:
    from medtl.stats.metrics import binary_metrics, roc_auc

    return float(roc_auc(y, s)), float(binary_metrics(y, s, t)["balanced_accuracy"])


def _score_sets(predict, sets: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: predict(v) for k, v in sets.items()}


def _summary(lever: str, y: np.ndarray, scores: dict[str, np.ndarray], t: float, minutes: float,
             **extra) -> dict:
    auc0, bal0 = _metrics(y, scores["clean"], t)
    per_set = {k: _metrics(y, s, t) for k, s in scores.items() if k != "clean"}
    shifted = list(per_set.values())
    worst = min(shifted, key=lambda m: m[1])
    return {"lever": lever, "clean_roc_auc": round(auc0, 4), "clean_balanced_accuracy": round(bal0, 4),
            "shift_mean_roc_auc": round(float(np.mean([m[0] for m in shifted])), 4),
            "shift_mean_balanced_accuracy": round(float(np.mean([m[1] for m in shifted])), 4),
            "balanced_accuracy_drop": round(bal0 - float(np.mean([m[1] for m in shifted])), 4),
            "worst_balanced_accuracy": round(worst[1], 4), "threshold": round(float(t), 4),
            "n_shifted_sets": len(shifted), "minutes": round(minutes, 2),
            "per_set_balanced_accuracy": {k: round(m[1], 3) for k, m in per_set.items()}, **extra}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_input_args(ap)
    ap.add_argument("--train", type=int, default=1000, help="Kermany films (whole patients) to train on")
    ap.add_argument("--holdout", type=int, default=300, help="films of unseen patients to score")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--max-epochs", type=int, default=3, help="cap on each init stage's epochs (CPU time)")
    ap.add_argument("--presets", default="chest_xray,chest_xray_robust",
                    help="augment presets to train, comma-separated ('' for none)")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE[;KEY=VALUE]",
                    help="also train the init settings with these config overrides, e.g. "
                         "'swa:train.swa_epochs=2' or 'mixup:augment.mixup=0.2' (repeatable)")
    ap.add_argument("--no-probe", action="store_true", help="skip the linear-probe line")
    ap.add_argument("--ensemble", type=int, default=0, metavar="K",
                    help="> 1: also cross-validate the init settings with K folds and score the fold "
                         "ensemble (median and pooled thresholds) and its first member alone")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--work", type=Path, help="keep runs here (default: a temporary folder)")
    args = ap.parse_args(argv)
    check_inputs(args.data, args.weights)
    from medtl.tfimport import import_tensorflow

    import_tensorflow()
    from medtl.config import load_config
    from medtl.data.manifest import load_manifest
    from medtl.data.pipeline import ImagePipeline
    from medtl.evaluate.probe import backbone_features, fit_probe
    from medtl.init import write_starter_config
    from medtl.run.tta import predict_views, tta_views
    from medtl.stats.postprocess import PostProcess
    from medtl.stats.thresholds import choose_threshold
    from medtl.train.trainer import train

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_shift_proxy_"))
    df = kermany_table(args.data)
    tr = sample_patients(df["label"], df["patient"], args.train, args.seed)
    rest = df.drop(df.index[tr]).reset_index(drop=True)
    ho = rest.iloc[sample_patients(rest["label"], rest["patient"], args.holdout, args.seed + 1)]
    train_csv = write_labels(df.iloc[tr], work / "train")
    test_csv = write_labels(ho, work / "holdout")
    cfg_path = write_starter_config(train_csv, work / "config.yaml", force=True)
    base = [f"model.backbone=mobilenetv2", f"model.weights={args.weights}",
            f"data.image_size=[{args.size},{args.size}]", f"data.cache_dir={work / 'cache'}",
            f"output_dir={work / 'runs'}"]
    init_cfg = load_config(cfg_path, base)
    caps = [f"train.stages.{i}.epochs={min(st.epochs, args.max_epochs)}" for i, st in enumerate(init_cfg.train.stages)]
    print(json.dumps({"setup": {"train_films": len(tr), "holdout_films": len(ho), "size": args.size,
                                "stages": [[st.unfreeze, min(st.epochs, args.max_epochs), st.lr]
                                           for st in init_cfg.train.stages],
                                "corruptions": {k: list(v[1]) for k, v in CORRUPTIONS.items()}}}), flush=True)

    # The holdout once, at model size, clean and corrupted.
    pipe = ImagePipeline(init_cfg)
    test_m = pipe.prepare(load_manifest(load_config(cfg_path, base + [f"data.manifest={test_csv}"])))
    x = np.concatenate([np.asarray(b) for b in pipe.dataset(test_m, training=False).map(lambda a, b: a)
                        .as_numpy_iterator()]).astype(np.float32)
    y = test_m.targets()[:, 0].astype(int)
    sets = {"clean": x}
    for name, (fn, levels) in CORRUPTIONS.items():
        for sev, level in enumerate(levels, 1):
            sets[f"{name}{sev}"] = fn(x, level).astype(np.float32)
    middle = {k: v for k, v in sets.items() if k == "clean" or k.endswith("2")}

    levers = [(f"preset={p}", [f"augment.preset={p}"]) for p in args.presets.split(",") if p]
    for v in args.variant:
        name, _, overrides = v.partition(":")
        if not name or not overrides:
            ap.error(f"--variant {v!r}: expected NAME:KEY=VALUE[;KEY=VALUE]")
        levers.append((name, overrides.split(";")))
    val = None
    for lever, overrides in levers:
        t0 = time.perf_counter()
        slug = "".join(c if c.isalnum() else "_" for c in lever)
        cfg = load_config(cfg_path, base + caps + overrides + [f"name={slug}"])
        res = train(cfg, run_dir=work / "runs" / slug, progress=False)
        t_train = (time.perf_counter() - t0) / 60
        val = res.val_predictions
        model = res.model

        def plain(v: np.ndarray) -> np.ndarray:
            return np.concatenate([predict_views(model, v[i:i + 64], tta_views("none"))[:, 0]
                                   for i in range(0, len(v), 64)])

        scores = _score_sets(plain, sets)
        for rule in RULES:
            t = choose_threshold(val["label"].to_numpy(), val["score"].to_numpy(), rule)
            print(json.dumps(_summary(f"{lever} threshold={rule}", y, scores, t, t_train,
                                      val_roc_auc=round(res.metrics["best"]["value"], 4))), flush=True)
        # calibrated:0.5: Platt-calibrate on validation, cut at probability 0.5 (a raw-scale cut)
        pp = PostProcess.fit("binary", ["negative", "positive"], val["label"].to_numpy(), val["score"].to_numpy(),
                             "calibrated:0.5", "platt", n_boot=0, seed=args.seed)
        print(json.dumps(_summary(f"{lever} threshold=calibrated:0.5 (platt)", y, scores,
                                  pp.raw_thresholds[0], t_train)), flush=True)
        # TTA over the clean set and the middle severity (5x the forward passes)
        t1 = time.perf_counter()

        def shifted(v: np.ndarray) -> np.ndarray:
            return np.concatenate([predict_views(model, v[i:i + 64], tta_views("shift"))[:, 0]
                                   for i in range(0, len(v), 64)])

        t = choose_threshold(val["label"].to_numpy(), val["score"].to_numpy(), "youden")
        mid_plain = {k: scores[k] for k in middle}
        print(json.dumps(_summary(f"{lever} tta=none (severity 2 only)", y, mid_plain, t, t_train)), flush=True)
        # as predict.tta: shift does in training: the threshold is chosen on the validation
        # films' TTA scores, so that it fits the scores it cuts
        all_m = pipe.prepare(load_manifest(init_cfg))
        val_m = all_m.subset(np.flatnonzero(all_m.df["path"].isin(set(val["path"])).to_numpy()))
        x_val = np.concatenate([np.asarray(b) for b in pipe.dataset(val_m, training=False).map(lambda a, b: a)
                                .as_numpy_iterator()]).astype(np.float32)
        t_tta = choose_threshold(val_m.targets()[:, 0], shifted(x_val), "youden")
        print(json.dumps(_summary(f"{lever} tta=shift (severity 2 only)", y, _score_sets(shifted, middle), t_tta,
                                  t_train + (time.perf_counter() - t1) / 60)), flush=True)

    if args.ensemble > 1:
        _ensemble(args.ensemble, cfg_path, base + caps, work, y, sets, args.seed)
    if args.no_probe or val is None:
        return

    # Linear probe on the pretrained features: fit on the training films, threshold on the
    # validation films of the last run (the same patients the fine-tuned model validated on).
    t0 = time.perf_counter()
    tr_m = pipe.prepare(load_manifest(init_cfg))
    val_paths = set(val["path"])
    is_val = tr_m.df["path"].isin(val_paths).to_numpy()
    fit_m, val_m = tr_m.subset(np.flatnonzero(~is_val)), tr_m.subset(np.flatnonzero(is_val))
    f_fit, f_val = backbone_features(init_cfg, [fit_m, val_m])
    est = fit_probe(f_fit, fit_m.targets()[:, 0], groups=fit_m.df["patient_id"].astype(str).to_numpy(dtype=object),
                    seed=args.seed)
    t = choose_threshold(val_m.targets()[:, 0], est.predict_proba(f_val)[:, 1], "youden")
    import keras

    from medtl.models.classifier import build_model
    from medtl.models.pooled import pooled_tensor

    m0 = build_model(init_cfg, 1)
    extractor = keras.Model(m0.inputs, pooled_tensor(m0))
    probe_scores = _score_sets(lambda v: est.predict_proba(extractor.predict(v, batch_size=64, verbose=0))[:, 1], sets)
    print(json.dumps(_summary("linear probe (pretrained features) threshold=youden", y, probe_scores, t,
                              (time.perf_counter() - t0) / 60, C=est.best_params_["logisticregression__C"])),
          flush=True)


def _ensemble(k: int, cfg_path: Path, overrides: list[str], work: Path, y: np.ndarray,
              sets: dict[str, np.ndarray], seed: int) -> None:
    """The fold ensemble as a lever: ``medtl cv`` with ``k`` folds on the training films, its
    mean fold score on the holdout cut at the median of the folds' validation thresholds and at
    the pooled out-of-fold threshold (``evaluate.ensemble_threshold``), beside fold 0's model
    alone with its own threshold (each fold model trains on (k-1)/k of the films, less its
    validation split)."""
    from medtl.config import load_config
    from medtl.evaluate.cv import run_cv
    from medtl.io.atomic import read_json
    from medtl.models.classifier import load_model
    from medtl.run.files import ensemble_thresholds, read_postprocess
    from medtl.run.layout import ENSEMBLE_FILE, MODEL_FILE, fold_dir
    from medtl.run.tta import predict_views, tta_views

    t0 = time.perf_counter()
    cfg = load_config(cfg_path, overrides + [f"evaluate.folds={k}", "evaluate.ensemble_threshold=pooled",
                                             "evaluate.bootstrap=200", f"name=cv{k}"])
    run = run_cv(cfg, run_dir=work / "runs" / f"cv{k}", progress=False)
    minutes = (time.perf_counter() - t0) / 60
    pps = [read_postprocess(fold_dir(run, f)) for f in range(k)]
    members = [load_model(fold_dir(run, f) / MODEL_FILE) for f in range(k)]
    per_member = [_score_sets(lambda v, m=m: np.concatenate([predict_views(m, v[i:i + 64], tta_views("none"))[:, 0]
                                                             for i in range(0, len(v), 64)]), sets)
                  for m in members]
    mean = {name: np.mean([pm[name] for pm in per_member], axis=0) for name in sets}
    pooled = read_json(run / ENSEMBLE_FILE)
    cuts = {"median": ensemble_thresholds(pps)[0], "pooled": pooled["thresholds"][0]}
    for where, t in cuts.items():
        print(json.dumps(_summary(f"cv{k} fold ensemble threshold={where}", y, mean, t, minutes,
                                  threshold_ci=pooled.get("threshold_ci") if where == "pooled" else None)),
              flush=True)
    print(json.dumps(_summary(f"cv{k} fold 0 alone threshold=own youden", y, per_member[0], pps[0].thresholds[0],
                              minutes / k)), flush=True)


if __name__ == "__main__":
    main()
