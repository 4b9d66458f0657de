"""Shift measures (medtl.stats.shift): false alarms on same-source holdouts and detection of other sources.

Trains the ../shared MobileNetV2 briefly on a patient sample of the Kermany paediatric films
(head on cached features, then the top blocks for an epoch, so the features are fine-tuned and
any memorisation of the training films shows), with ``medtl.train.train``, which writes the
run's feature_summary.npz. Then, through :class:`medtl.run.predictor.Predictor` (the path of
``medtl evaluate``/``predict``):

(i) same source: ``--seeds`` patient-grouped holdouts of ``--holdout`` films from patients the
    run never saw; prints the domain AUC, share OOD and whether it warns, and the false-alarm
    rate (share of seeds that warn; the target is <= 5%);
(ii) other sources: synthetic films of ``medtl.data.synthetic`` (sample_data) and the eight
    ../shared DICOM adult films (too few for the domain AUC: only the OOD share is meaningful).

CPU-sized: about 3-6 minutes on two cores.

Example:
    python benchmarks/bench_shift.py --train 700 --seeds 20
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _kermany import SHARED, add_input_args, check_inputs, kermany_table, sample_patients, write_labels  # noqa: E402


def _features(pred, paths: list[str]) -> tuple[pd.DataFrame, np.ndarray]:
    df, feats = pred.predict_paths(paths, batch_size=32, features=True)
    return df, feats


def _line(name: str, r, warn: str | None) -> str:
    auc = "-" if r.domain_auc is None else f"{r.domain_auc:.3f} [{r.domain_auc_ci[0]:.3f}, {r.domain_auc_ci[1]:.3f}]"
    return (f"{name:<34} n {r.n:>4}  domain AUC {auc:<22} share OOD {r.share_ood:6.1%}  "
            f"{'WARN' if warn else ('unreliable (n small)' if not r.reliable else 'no warning')}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_input_args(ap)
    ap.add_argument("--train", type=int, default=700, help="Kermany films (whole patients) to train on")
    ap.add_argument("--holdout", type=int, default=150, help="films per same-source holdout")
    ap.add_argument("--pool", type=int, default=900, help="unseen Kermany films the holdouts are drawn from")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--work", type=Path, help="keep the run here (default: a temporary folder)")
    args = ap.parse_args(argv)
    check_inputs(args.data, args.weights)
    from medtl.tfimport import import_tensorflow

    import_tensorflow()
    from medtl.config import config_from_dict
    from medtl.data.synthetic import make_sample_data
    from medtl.run.predictor import Predictor, collect_paths
    from medtl.stats.shift import AUC_CUT, OOD_SHARE_CUT, assess_shift, build_summary, shift_warning
    from medtl.train.trainer import train

    t0 = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_shift_"))
    df = kermany_table(args.data)
    tr = sample_patients(df["label"], df["patient"], args.train, args.seed)
    rest = df.drop(df.index[tr]).reset_index(drop=True)
    pool = rest.iloc[sample_patients(rest["label"], rest["patient"], args.pool, args.seed + 1)].reset_index(drop=True)
    labels = write_labels(df.iloc[tr], work / "train")
    cfg = config_from_dict({
        "name": "shift", "seed": args.seed, "task": "binary", "output_dir": str(work / "runs"),
        "data": {"manifest": str(labels), "path_column": "file", "label_column": "label",
                 "patient_column": "patient", "image_size": [args.size, args.size],
                 "cache_dir": str(work / "cache"), "val_fraction": 0.2, "workers": 2},
        "augment": {"preset": "none"},
        "model": {"backbone": "mobilenetv2", "weights": str(args.weights), "dropout": 0.2},
        "train": {"batch_size": 32, "patience": 3, "mixed_precision": "off", "distribute": "none",
                  "stages": [{"unfreeze": "head", "epochs": 4, "lr": 1e-3},
                             {"unfreeze": 2, "epochs": 1, "lr": 1e-4}]},
    })
    run_dir = work / "runs" / "run"
    # A rerun with --work reuses the trained run (e.g. to try other holdout sizes).
    res = train(None, resume=run_dir, progress=False) if (run_dir / "model.keras").is_file() else \
        train(cfg, run_dir=run_dir, progress=False)
    t_train = time.perf_counter() - t0
    pred = Predictor(res.run_dir)
    summary = pred.feature_summary()
    print(f"trained on {len(tr)} Kermany films in {t_train:.0f}s; best val {res.metrics['monitor']} "
          f"{res.metrics['best']['value']:.3f}; summary of {len(summary.vectors)} training films "
          f"({summary.vectors.shape[1]}-d)")
    print(f"warning rule: domain AUC lower 95% bound > {AUC_CUT} or share OOD > {OOD_SHARE_CUT:.0%} (n >= 20)\n")

    pool_df, pool_f = _features(pred, pool["file"].tolist())
    assert (pool_df["error"] == "").all()
    # The validation films: unseen by the weights, so a summary of them shows what memorisation of
    # the training films does to the false-alarm rate.
    val = pd.read_csv(res.run_dir / "val_predictions.csv")
    _, val_f = _features(pred, val["path"].tolist())
    val_summary = build_summary(val_f, val["patient_id"].astype(str).to_numpy(), seed=args.seed)

    print("(i) same source: patient-grouped holdouts of unseen Kermany patients")
    alarms, alarms_val, aucs, oods, oods_val, oods99 = 0, 0, [], [], [], []
    for s in range(args.seeds):
        idx = sample_patients(pool["label"], pool["patient"], args.holdout, seed=1000 + s)
        r = assess_shift(summary, pool_f[idx], groups=pool["patient"].to_numpy()[idx], seed=s)
        rv = assess_shift(val_summary, pool_f[idx], groups=pool["patient"].to_numpy()[idx], seed=s)
        w = shift_warning(r)
        alarms += w is not None
        alarms_val += shift_warning(rv) is not None
        aucs.append(r.domain_auc)
        oods.append(r.share_ood)
        oods_val.append(rv.share_ood)
        oods99.append(float((r.ood_percentile > 99).mean()))
        print(_line(f"  holdout seed {s}", r, w))
    print(f"  FALSE-ALARM RATE {alarms}/{args.seeds} = {alarms / args.seeds:.0%} (target <= 5%); domain AUC "
          f"median {np.median(aucs):.3f} (max {np.max(aucs):.3f}); share OOD median {np.median(oods):.1%} "
          f"(max {np.max(oods):.1%}; nominal 5%); beyond the 99th percentile median {np.median(oods99):.1%}")
    print(f"  with a summary of the validation films instead: false alarms {alarms_val}/{args.seeds}, share OOD "
          f"median {np.median(oods_val):.1%}")

    print("\n(ii) other sources")
    synth = make_sample_data(work / "synthetic", n_patients=60, seed=5, image_size=(256, 256), prevalence=0.3)
    sdf = pd.read_csv(synth)
    sdf_paths = [str((synth.parent / f).resolve()) for f in sdf["file"]]
    t, f = _features(pred, sdf_paths)
    r = assess_shift(summary, f, groups=sdf["patient_id"].astype(str).to_numpy()[(t["error"] == "").to_numpy()])
    print(_line("  sample_data synthetic DICOM", r, shift_warning(r)))
    dicom = collect_paths([SHARED / "data" / "dicom-cxr"])
    t, f = _features(pred, dicom)
    ok = (t["error"] == "").to_numpy()
    r = assess_shift(summary, f)
    print(_line(f"  ../shared adult DICOM ({ok.sum()} read)", r, shift_warning(r)))
    # Kermany films vs adult ones the other way round is not possible here (8 adult films); a
    # mixture shows how the share OOD grows with the share of foreign films.
    for frac in (0.1, 0.25, 0.5):
        idx = sample_patients(pool["label"], pool["patient"], args.holdout, seed=77)
        k = int(round(frac * len(idx)))
        mix = np.vstack([pool_f[idx[k:]], f[np.resize(np.arange(len(f)), k)] if len(f) else pool_f[:0]])
        rm = assess_shift(summary, mix, seed=0)
        print(_line(f"  Kermany + {frac:.0%} adult films", rm, shift_warning(rm)))
    print(f"\ntotal {time.perf_counter() - t0:.0f}s; run folder {res.run_dir}")


if __name__ == "__main__":
    main()
