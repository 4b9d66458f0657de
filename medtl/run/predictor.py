"""ONE predictor for every run kind: a training run folder, a fold folder, a ``.keras`` file
with ``model_info.json`` beside it, a cross-validation run (the ensemble of its finished folds)
and a CV run with a retrained final model (``evaluate.final_model: retrain``).

``medtl predict``, :func:`medtl.predict_paths`, ``medtl evaluate``, ``medtl explain`` and the
report all score films through :class:`Predictor`, so they cannot disagree. The image pipeline
is rebuilt from ``model_info.json``, so prediction preprocesses exactly as training did.

TensorFlow is loaded only when models are (on the first prediction).

Example:
    >>> from medtl.run import collect_paths, predict_paths
    >>> df = predict_paths("runs/demo/cv-1a2b3c4d5e", collect_paths(["new_films/"]))
    >>> df[["path", "score", "prediction", "error"]].head()
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import yaml

from medtl.io.atomic import read_json
from medtl.io.image import is_image_file
from medtl.run.files import (
    deployed_ensemble_thresholds, pipeline_config, read_feature_summary, read_model_info, read_postprocess,
    score_columns,
)
from medtl.run.layout import (
    CONFIG_FILE, CV_FILE, FINAL_DONE, MODEL_FILE, MODEL_INFO_FILE, POSTPROCESS_FILE, SITE_POSTPROCESS_FILE, final_dir,
    finished_folds, fold_dir, is_cv_run,
)
from medtl.run.tta import TTA_MODES, predict_dataset_each_view, predict_each_view, tta_views, view_mean
from medtl.stats.postprocess import PostProcess
from medtl.stats.selective import decides_otherwise, member_spread, uncertain_flags
from medtl.stats.shift import FeatureSummary, ShiftResult, assess_shift

__all__ = ["Predictor", "MemberScores", "TTAMismatchWarning", "predict_paths", "collect_paths", "with_ood_columns",
           "with_uncertain_columns"]


class TTAMismatchWarning(UserWarning):
    """Films are scored with other test-time views (``predict.tta``) than the validation scores
    the run's threshold and calibrator were chosen on."""


class MemberScores(list):
    """Each member model's raw scores (N, K), averaged over the test-time views: a list, as
    :meth:`Predictor.combine` takes it. ``views`` keeps each member's raw scores per view
    (V, N, K) when there are several views (None with one), for :meth:`Predictor.with_uncertain`.

    Example:
        >>> raw = p.predict_dataset(ds)
        >>> s, members = p.combine(raw); raw.views is None   # True without predict.tta
    """

    def __init__(self, means: Sequence[np.ndarray] = (), views: list[np.ndarray] | None = None) -> None:
        super().__init__(means)
        self.views = views

    @classmethod
    def of_views(cls, each: list[np.ndarray]) -> MemberScores:
        """From each member's per-view raw scores (V, N, K); one view keeps no ``views``."""
        return cls([view_mean(e) for e in each], each if each and len(each[0]) > 1 else None)

    def head(self, n: int) -> MemberScores:
        """The first ``n`` films (a padded batch cut back to its films)."""
        return MemberScores([m[:n] for m in self], None if self.views is None else [v[:, :n] for v in self.views])

    @classmethod
    def concat(cls, parts: Sequence[MemberScores]) -> MemberScores:
        """``parts`` (at least one) joined film-wise."""
        views = None if parts[0].views is None else [np.concatenate(v, axis=1) for v in zip(*(p.views for p in parts))]
        return cls([np.concatenate(m) for m in zip(*parts)], views)


class Predictor:
    """Scores images with a finished run: a CV run (its final model), one fold folder, a
    training run folder, or a ``.keras`` file with ``model_info.json`` beside it.

    A CV run's final model is, by default, the ensemble of its fold models: each model's score
    is calibrated with its fold's calibrator (if any), the ensemble score is the mean over folds
    and its threshold :func:`~medtl.run.files.deployed_ensemble_thresholds`. With
    ``evaluate.final_model: retrain`` it is the one model in ``RUN/final`` with the threshold
    saved there. A single model uses the ``postprocess.json`` beside it (threshold and
    calibrator chosen on its validation split); without one, the ``model_info.json``
    threshold, or 0.5.

    With ``tta`` (``predict.tta``, :mod:`medtl.run.tta`) each member's raw scores are the mean
    over the test-time views, before its calibrator; ``none`` is the plain prediction exactly.
    The trainer chose each threshold on validation scores averaged over the run's own
    ``predict.tta`` views (``postprocess.json`` records which); scoring with other views warns
    (:class:`TTAMismatchWarning`), once, naming both modes and the fix.

    Attributes:
        task, classes: of the models.
        thresholds: decision threshold per score column (None for multiclass).
        threshold_source: where the threshold came from.
        members: the model folders/files used.
        folds: the fold of each member of an ensemble (empty for one model).
        info: the first member's model_info.json.
        tta: the test-time augmentation mode in use.
        threshold_tta: the ``predict.tta`` mode(s) the members' thresholds and calibrators were
            chosen under (``none`` for files from before it was recorded; folds that differ
            are joined with ','), or None when no postprocess.json was saved.
        site: the site post-processing (``site=``, a ``site_postprocess.json`` from ``medtl
            evaluate --recalibrate``) applied on top of the run's scores, or None.

    Example:
        >>> p = Predictor("runs/demo/cv-1a2b3c4d5e")
        >>> p.predict_paths(["a.dcm", "b.png"]).prediction.tolist()
        ['lesion', 'normal']
    """

    def __init__(self, run_or_model: str | Path, tta: str | None = None, site: str | Path | None = None) -> None:
        p = Path(run_or_model)
        if not p.exists():
            raise FileNotFoundError(f"{p}: not found; pass a medtl run folder (CV or training) or a .keras file")
        self.path = p
        if is_cv_run(p) and read_json(p / CV_FILE).get("final_model", "ensemble") == "retrain":
            self._use_final(p)
        elif is_cv_run(p):
            self._use_folds(p)
        else:
            self._use_model(p)
        infos = [read_model_info(m) for m in self.members]
        first = infos[0]
        for m, info in zip(self.members[1:], infos[1:]):
            if info["preprocessing"] != first["preprocessing"] or info["classes"] != first["classes"]:
                raise ValueError(f"{m}: preprocessing or classes differ from {self.members[0]}; "
                                 "the folds of one run must share them")
        self.info = first
        self.task: str = first["task"]
        self.classes: list[str] = list(first["classes"])
        self._models: list | None = None
        self._dual = None
        # None: the run's own predict.tta (so `medtl cv --set predict.tta=shift` carries over)
        saved_tta, hflip = _saved_tta(p)
        self.tta: str = tta if tta is not None else saved_tta
        self._views = tta_views(self.tta)
        if "flip" in self.tta and not hflip:
            raise ValueError(f"tta {self.tta!r}: {p} was trained without left-right flips (augment.hflip false), "
                             "so a mirrored film is new to it; use tta 'shift' or 'none'")
        chosen = sorted({m for pp in self.pps if pp is not None for m in str(pp.tta).split(",")})
        self.threshold_tta: str | None = ",".join(chosen) if chosen else None
        mismatch = _tta_mismatch(p, chosen, self.tta)
        if mismatch:
            warnings.warn(mismatch, TTAMismatchWarning, stacklevel=2)
        self.site: PostProcess | None = None
        if site is not None:
            self._use_site(Path(site))

    def _use_site(self, path: Path) -> None:
        """Apply a site post-processing (``medtl evaluate --recalibrate``) on top of the run:
        its calibrator maps the ensemble's decision-scale scores, its thresholds decide."""
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such site file; pass the {SITE_POSTPROCESS_FILE} that "
                                    "`medtl evaluate RUN DATA --recalibrate K` wrote")
        site = PostProcess.from_dict(read_json(path))
        if site.task != self.task or list(site.classes) != self.classes or site.thresholds is None:
            raise ValueError(f"{path}: a site file for a {site.task} model of classes {site.classes}, but {self.path} "
                             f"is {self.task} with {self.classes}; refit it with medtl evaluate {self.path} DATA "
                             "--recalibrate K")
        self.site = site
        self.thresholds = list(site.thresholds)
        k = (site.extra.get("site") or {}).get("k")
        fitted = f", refitted on {k} local patients" if k else ""
        self.threshold_source = (f"site file {path} ({site.rule}, calibration {site.calibration}{fitted}); "
                                 f"the run's own: {self.threshold_source}")

    def _use_folds(self, run: Path) -> None:
        """The ensemble of a CV run's finished folds."""
        cv = read_json(run / CV_FILE)
        done = finished_folds(run, int(cv["folds"]))
        if not done:
            raise FileNotFoundError(f"{run}: no finished fold yet; run medtl cv first")
        self.members = [fold_dir(run, f) for f in done]
        self.folds = done
        self.pps: list[PostProcess | None] = [read_postprocess(m) for m in self.members]
        self.thresholds, self.threshold_source = deployed_ensemble_thresholds(
            run, done, self.pps)  # type: ignore[arg-type]
        if len(done) < int(cv["folds"]):
            self.threshold_source += f" (only {len(done)} of {cv['folds']} folds finished)"

    def _use_final(self, run: Path) -> None:
        """The retrained final model of a CV run (``evaluate.final_model: retrain``)."""
        fin = final_dir(run)
        if not (fin / FINAL_DONE).is_file():
            raise FileNotFoundError(
                f"{run}: evaluate.final_model is retrain and the final model in {fin} is not finished yet "
                f"({FINAL_DONE} missing); run `medtl cv CONFIG --run {run}` with the config it was started "
                f"with ({run / CONFIG_FILE}) to finish the folds and retrain it")
        pp = read_postprocess(fin)
        self.members, self.folds, self.pps = [fin], [], [pp]
        self.thresholds = pp.thresholds
        rule = pp.extra.get("threshold_rule") or ("arg-max (multiclass)" if pp.thresholds is None else pp.rule)
        self.threshold_source = f"{rule}; final model retrained on all data, {fin}"

    def _use_model(self, p: Path) -> None:
        """One model: a training run or fold folder, or a .keras file."""
        if p.is_dir() and not (p / MODEL_FILE).is_file() and not (p / MODEL_INFO_FILE).is_file():
            # Neither file: not a run folder at all. With model_info.json only, the missing model
            # is reported when it is loaded (the folder is an unfinished run).
            raise FileNotFoundError(f"{p}: no {MODEL_FILE} in this folder; pass a training run folder, "
                                    "a CV run folder or a .keras model file")
        if p.is_file() and p.suffix != ".keras":
            raise ValueError(f"{p}: not a .keras model file; pass a run folder or a .keras file")
        folder = p if p.is_dir() else p.parent
        self.members, self.folds = [p], []
        pp_file = folder / POSTPROCESS_FILE
        if pp_file.is_file():
            pp = read_postprocess(folder)
            self.pps = [pp]
            self.thresholds = pp.thresholds
            self.threshold_source = f"chosen on the validation split ({pp.rule}), {pp_file}"
            return
        # No post-processing saved (e.g. a bare model file): the raw-scale threshold of model_info.json.
        info = read_model_info(p)
        self.pps = [None]
        t = info.get("threshold")
        k = 1 if info["task"] == "binary" else len(info["classes"])
        if info["task"] == "multiclass":
            self.thresholds = None
            self.threshold_source = "arg-max (multiclass)"
        elif t is None:
            self.thresholds = [0.5] * k
            self.threshold_source = "0.5 (no threshold saved with the model)"
        else:
            self.thresholds = [float(v) for v in np.broadcast_to(np.asarray(t, dtype=float), (k,))]
            self.threshold_source = f"model_info.json ({info.get('threshold_rule') or 'saved'})"

    # ----------------------------------------------------------------------------------------

    def _load(self) -> list:
        if self._models is None:
            # medtl's loader registers medtl's layers; in a function so TensorFlow loads only when a model is used
            from medtl.models.classifier import load_model

            paths = [m / MODEL_FILE if m.is_dir() else m for m in self.members]
            for mp in paths:
                if not mp.is_file():
                    raise FileNotFoundError(f"{mp}: model file missing; the run folder is incomplete")
            self._models = [load_model(mp) for mp in paths]
        return self._models

    def models(self) -> list:
        """The member models, loaded once (medtl's loader, so medtl's layers are registered)."""
        return self._load()

    def pipeline_config(self, like=None):
        """A Config reproducing the training-time preprocessing (cache/workers/on_error from ``like``)."""
        cfg = pipeline_config(self.info)
        if like is not None:
            cfg.data.cache_dir = like.data.cache_dir
            cfg.data.workers = like.data.workers
            cfg.data.on_error = like.data.on_error
        return cfg

    def combine(self, raw: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """(ensemble decision-scale scores, per-member decision-scale scores) from raw scores;
        with a site file, both through the site calibrator (if it has one)."""
        members = [pp.calibrate(r) if pp is not None else np.asarray(r, dtype=np.float64)
                   for pp, r in zip(self.pps, raw)]
        if self.site is not None:
            # The site calibrator maps the ensemble score; the members get the same (increasing)
            # map so that their decisions at the site threshold stay comparable with the ensemble's.
            return self.site.calibrate(np.mean(members, axis=0)), [self.site.calibrate(m) for m in members]
        return np.mean(members, axis=0), members

    def decide(self, s: np.ndarray) -> np.ndarray:
        """Decisions for decision-scale scores: (N, K) 0/1, or (N,) class index for multiclass."""
        if self.task == "multiclass":
            return s.argmax(axis=1)
        return (s >= np.asarray(self.thresholds)[None, :]).astype(np.int8)

    def raw_scores(self, x: np.ndarray) -> MemberScores:
        """Each member model's raw scores (N, K) for a batch of model inputs (N, H, W, 1), with
        the per-view scores when ``tta`` has several views (:class:`MemberScores`)."""
        return MemberScores.of_views([predict_each_view(m, x, self._views) for m in self._load()])

    def predict_dataset(self, ds) -> MemberScores:
        """Each member model's raw scores (N, K) over a ``tf.data`` dataset of (x, y), with the
        per-view scores when ``tta`` has several views (:class:`MemberScores`)."""
        xs = ds.map(lambda x, y: x)
        return MemberScores.of_views([predict_dataset_each_view(m, xs, self._views) for m in self._load()])

    # -- shift ---------------------------------------------------------------------------------

    def feature_summary(self) -> FeatureSummary | None:
        """The training-film summary the shift is measured against: the first member's (an
        ensemble is measured with its first fold model's features and that fold's summary, as
        each fold model has its own feature space); None for runs without one."""
        return read_feature_summary(self.members[0])

    def _dual_model(self):
        """The first member, returning [scores, pooled features] in one pass (built once)."""
        if self._dual is None:
            # why: medtl.models loads TensorFlow; only reached when a model is already in use
            from medtl.models.pooled import with_pooled_features

            self._dual = with_pooled_features(self._load()[0])
        return self._dual

    def predict_dataset_with_features(self, ds) -> tuple[MemberScores, np.ndarray]:
        """(each member's raw scores (N, K), the first member's pooled features (N, D)) over a
        ``tf.data`` dataset of (x, y); the first member's features come from the same forward
        pass as its scores.

        Example:
            >>> raw, feats = Predictor(run).predict_dataset_with_features(ds)
        """
        xs = ds.map(lambda x, y: x)
        if len(self._views) > 1:  # features of the film as it is; scores over the views
            feats = self._dual_model().predict(xs, verbose=0)[1]
            return self.predict_dataset(ds), np.asarray(feats, dtype=np.float32)
        s0, feats = self._dual_model().predict(xs, verbose=0)
        raw = MemberScores([np.asarray(s0, dtype=np.float64)])
        raw += [np.asarray(m.predict(xs, verbose=0), dtype=np.float64) for m in self._load()[1:]]
        return raw, np.asarray(feats, dtype=np.float32)

    def shift(self, features: np.ndarray, groups: Sequence[str] | None = None, seed: int = 0) -> ShiftResult | None:
        """Shift of films with these pooled features from the training films (medtl.stats.shift);
        None when the run kept no feature summary.

        Example:
            >>> df, feats = p.predict_paths(paths, features=True)
            >>> r = p.shift(feats); r.domain_auc, r.share_ood
        """
        summary = self.feature_summary()
        if summary is None:
            return None
        return assess_shift(summary, features, groups=groups, seed=seed)

    def predict_with_shift(self, paths: Sequence[str | Path], batch_size: int = 16,
                           seed: int = 0) -> tuple[pd.DataFrame, ShiftResult | None]:
        """:meth:`predict_paths`, plus how far the readable films lie from the training films.

        The table gains ``ood_percentile`` and ``ood`` (:func:`with_ood_columns`) when the run
        kept a feature summary (runs trained before it existed did not: table unchanged, None).

        Example:
            >>> df, shift = p.predict_with_shift(["new/"])
            >>> shift.domain_auc if shift else None
        """
        if self.feature_summary() is None:
            df, _, raw = self._predict_paths(paths, batch_size, features=False)
            return self.with_uncertain(df, raw), None
        df, feats, raw = self._predict_paths(paths, batch_size, features=True)
        result = self.shift(feats, seed=seed) if len(feats) else None
        return self.with_uncertain(with_ood_columns(df, result), raw), result

    def with_uncertain(self, df: pd.DataFrame, raw: Sequence[np.ndarray] | None = None) -> pd.DataFrame:
        """``df`` with per-film ``spread`` and ``uncertain``: the films to refer.

        ``uncertain`` is True when any score that went into the film's decision decides
        otherwise than the decision given: a fold model (its view-averaged score) against the
        ensemble, or one test-time view of a model against the mean the film is decided on
        (for an ensemble with ``tta``: any fold model or any view). The rule is fixed, not a
        tuned cut on ``spread``: a cut would have to be chosen on films scored this way with
        known labels, and the only such films a run has are its test films
        (:mod:`medtl.stats.selective`). ``spread`` is the standard deviation, on the decision
        scale (calibrated, probability), of the fold models' scores (no ``tta``), of the
        views' scores (one model with ``tta``), or of every fold model's score under every
        view (an ensemble with ``tta``); the largest over score columns.

        Without ``tta``: from the ``<col>_fold<k>`` columns (:func:`with_uncertain_columns`);
        ``df`` unchanged for one model (one member cannot disagree with itself). With ``tta``
        the views' scores are not in ``df``: pass ``raw``, the :class:`MemberScores` of
        ``df``'s readable rows (``error`` empty; all rows without an ``error`` column) in
        order, as :meth:`predict_dataset` or :meth:`raw_scores` give them.

        Example:
            >>> raw = p.predict_dataset(ds)
            >>> p.with_uncertain(table, raw)[["spread", "uncertain"]]
        """
        if getattr(raw, "views", None) is None:
            if len(self.members) < 2:
                return df
            return with_uncertain_columns(df, self.folds, score_columns(self.task, self.classes), self.thresholds)
        ok = (df["error"] == "").to_numpy() if "error" in df.columns else np.ones(len(df), bool)
        n = len(raw[0])  # type: ignore[index]
        if int(ok.sum()) != n:
            raise ValueError(f"with_uncertain: {n} scored films for {int(ok.sum())} readable rows; "
                             "pass the scores the table was made from")
        spread, flag = self.disagreement(raw)  # type: ignore[arg-type]
        return _put_uncertain(df, ok, spread, flag)

    def disagreement(self, raw: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Per film (``spread``, ``uncertain``) of raw member scores, as :meth:`with_uncertain`
        defines them; with ``raw.views`` (:class:`MemberScores`) the test-time views count.

        Example:
            >>> spread, uncertain = p.disagreement(p.raw_scores(x))
        """
        _, members = self.combine(raw)
        stacked = np.stack(members)
        views = getattr(raw, "views", None)
        if views is None:
            spread, _, flag = uncertain_flags(stacked, self.thresholds)
            return spread, flag
        # Each view through each member's calibrator (and the site's), as the mean is.
        voters = np.stack([m for v in range(len(views[0])) for m in self.combine([e[v] for e in views])[1]])
        reference = stacked.mean(axis=0)  # the ensemble's score (one model: its view mean)
        flag = decides_otherwise(reference, np.concatenate([stacked, voters]), self.thresholds)
        return member_spread(voters), flag

    def labels(self, decisions: np.ndarray) -> list[str]:
        """Readable prediction per row: class name (binary, multiclass) or ';'-joined labels."""
        if self.task == "multiclass":
            return [self.classes[int(i)] for i in decisions]
        if self.task == "binary":
            return [self.classes[int(d)] for d in decisions[:, 0]]
        return [";".join(c for c, v in zip(self.classes, row) if v) for row in decisions]

    def predict_paths(self, paths: Sequence[str | Path], batch_size: int = 16,
                      features: bool = False) -> pd.DataFrame | tuple[pd.DataFrame, np.ndarray]:
        """One row per path, in order: ``path``, score column(s) on the decision scale,
        ``score_fold<k>`` for an ensemble, ``prediction`` and ``error`` (unreadable files get a
        reason and no scores).

        With ``features=True``: ``(table, pooled features)``, the features (first member, same
        forward pass) one row per readable file (``error`` empty), in table order.
        """
        df, feats, _ = self._predict_paths(paths, batch_size, features)
        return (df, feats) if features else df

    def _predict_paths(self, paths: Sequence[str | Path], batch_size: int, features: bool
                       ) -> tuple[pd.DataFrame, np.ndarray | None, MemberScores]:
        """(:meth:`predict_paths`' table, the features or None, the raw scores of the readable
        rows in order, for :meth:`with_uncertain`)."""
        from medtl.data.pipeline import ImagePipeline  # imports TensorFlow: loaded only when predicting

        pipe = ImagePipeline(self.pipeline_config())
        cols = score_columns(self.task, self.classes)
        rows: list[dict] = [{"path": str(p), "error": ""} for p in paths]
        ok: list[int] = []
        batch: list[np.ndarray] = []
        feats: list[np.ndarray] = []
        scored: list[MemberScores] = []

        def flush() -> None:
            idx = ok[len(ok) - len(batch):]
            x = np.stack(batch)
            if len(x) < batch_size:
                # Pad the last batch: one input shape means one traced predict function per model.
                x = np.concatenate([x, np.zeros((batch_size - len(x), *x.shape[1:]), x.dtype)])
            if features and len(self._views) > 1:  # features of the film as it is; scores over the views
                feats.append(np.asarray(self._dual_model().predict_on_batch(x)[1], dtype=np.float32)[:len(batch)])
                raw = self.raw_scores(x)
            elif features:
                s0, f = self._dual_model().predict_on_batch(x)
                feats.append(np.asarray(f, dtype=np.float32)[:len(batch)])
                others = [np.asarray(m.predict_on_batch(x), dtype=np.float64) for m in self._load()[1:]]
                raw = MemberScores([np.asarray(s0, dtype=np.float64), *others])
            else:
                raw = self.raw_scores(x)
            scored.append(raw.head(len(batch)))
            s, members = self.combine(scored[-1])
            labels = self.labels(self.decide(s))
            for r, i in enumerate(idx):
                rows[i].update(zip(cols, s[r].tolist()))
                if len(self.members) > 1:
                    for f, ms in zip(self.folds, members):
                        rows[i].update({f"{c}_fold{f}": v for c, v in zip(cols, ms[r].tolist())})
                rows[i]["prediction"] = labels[r]
            batch.clear()

        for i, p in enumerate(paths):
            try:
                x, _ = pipe.load(str(p))
            except Exception as exc:  # noqa: BLE001 - every failure becomes a listed error row
                rows[i]["error"] = str(exc).strip().replace("\n", " ") or type(exc).__name__
                continue
            ok.append(i)
            batch.append(np.asarray(x, dtype=np.float32))
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
        extra = [f"{c}_fold{f}" for f in self.folds for c in cols] if len(self.members) > 1 else []
        df = pd.DataFrame(rows, columns=["path", *cols, *extra, "prediction", "error"])
        df["prediction"] = df["prediction"].fillna("")
        if scored:
            raw_ok = MemberScores.concat(scored)
        else:  # no readable film: no scores, in the shapes scores have
            none = np.zeros((len(self._views), 0, len(cols)))
            raw_ok = MemberScores.of_views([none] * len(self.members))
        if features:
            return df, (np.concatenate(feats) if feats else np.zeros((0, 0), np.float32)), raw_ok
        return df, None, raw_ok


def _tta_mismatch(where: Path, chosen: Sequence[str], tta: str) -> str | None:
    """The one-line warning when films are scored with ``tta`` views but the thresholds were
    chosen under the ``chosen`` mode(s); None when they agree (or nothing was recorded)."""
    if not chosen or list(chosen) == [tta]:
        return None
    was = repr(chosen[0]) if len(chosen) == 1 else f"{' and '.join(map(repr, chosen))} (the folds differ)"
    other = chosen[0] if len(chosen) == 1 and chosen[0] in TTA_MODES else None
    instead = (f", or score with tta {other!r} (Predictor/evaluate_external tta={other!r})" if other else "")
    return (f"{where}: its decision threshold was chosen on validation scores under predict.tta {was}, but films "
            f"are scored with predict.tta {tta!r}, so the threshold may not fit their scores; retrain with "
            f"predict.tta: {tta} (the threshold is then chosen on the same views){instead}")


def _put_uncertain(df: pd.DataFrame, ok: np.ndarray, spread: np.ndarray, flag: np.ndarray) -> pd.DataFrame:
    """``df`` with ``spread`` and ``uncertain`` given for its ``ok`` rows (NaN / False elsewhere)."""
    out = df.copy()
    full = np.full(len(df), np.nan)
    full[ok] = spread
    out["spread"] = full
    flags = np.zeros(len(df), dtype=bool)
    flags[ok] = flag
    out["uncertain"] = flags
    return out


def _saved_tta(p: Path) -> tuple[str, bool]:
    """(``predict.tta``, ``augment.hflip``) of the config saved with a run; ("none", True) when
    there is none (a bare .keras file: the caller knows what it was trained on)."""
    folder = p if p.is_dir() else p.parent
    for cand in (folder / CONFIG_FILE, folder.parent / CONFIG_FILE):  # a fold folder: its CV run's config
        if cand.is_file():
            raw = yaml.safe_load(cand.read_text()) or {}
            return (str(((raw.get("predict") or {}).get("tta")) or "none"),
                    bool((raw.get("augment") or {}).get("hflip", False)))
    return "none", True


def predict_paths(run_or_model: str | Path, paths: Sequence[str | Path], batch_size: int = 16) -> pd.DataFrame:
    """Predict on image files with a finished run or model, as ``medtl predict`` does.

    Args:
        run_or_model: a training run folder, a fold folder, a ``.keras`` file with
            model_info.json beside it, or a cross-validation run folder (the ensemble of its
            finished folds, or its retrained final model).
        paths: DICOM/PNG/JPEG files (see :func:`collect_paths` to expand folders).
        batch_size: images per forward pass.

    Returns:
        One row per path, in order: ``path``, ``score`` (binary: probability of the positive
        class) or ``score_<class>`` columns (calibrated when a calibrator was fitted), for an
        ensemble ``score_fold<k>`` per fold, ``prediction`` (class name at the run's threshold;
        multilabel: names joined with ';') and ``error`` (empty, or why the file could not be
        read; such rows have no scores); with the run's feature summary also ``ood_percentile``
        and ``ood`` per film, and ``df.attrs["shift"]`` the figures of the whole set; for an
        ensemble or with ``predict.tta`` also ``spread`` and ``uncertain`` (the fold models or
        the test-time views disagree: a film to refer; :meth:`Predictor.with_uncertain`).

    Example:
        >>> predict_paths("runs/demo/cv-1a2b3c4d5e", ["a.dcm"]).loc[0, "score"]
        0.93
    """
    df, shift = Predictor(run_or_model).predict_with_shift(paths, batch_size=batch_size)
    df.attrs["shift"] = shift.as_dict() if shift is not None else None
    return df


def with_ood_columns(df: pd.DataFrame, result: ShiftResult | None, ok: Sequence[bool] | np.ndarray | None = None
                     ) -> pd.DataFrame:
    """``df`` with per-film ``ood_percentile`` (k-NN distance to the training films as a
    percentile of their own) and ``ood`` (True beyond the 95th) columns; rows not in ``ok``
    (default: rows whose ``error`` is empty, else all rows) get NaN / False. Unchanged when
    ``result`` is None (a run without a feature summary).

    Example:
        >>> df, feats = p.predict_paths(paths, features=True)
        >>> df = with_ood_columns(df, p.shift(feats))
    """
    if result is None:
        return df
    if ok is None:
        ok = (df["error"] == "").to_numpy() if "error" in df.columns else np.ones(len(df), bool)
    ok = np.asarray(ok, dtype=bool)
    pct = np.full(len(df), np.nan)
    pct[ok] = result.ood_percentile
    out = df.copy()
    out["ood_percentile"] = np.round(pct, 1)
    flag = np.zeros(len(df), dtype=bool)
    flag[ok] = result.ood
    out["ood"] = flag
    return out


def with_uncertain_columns(df: pd.DataFrame, folds: Sequence[int], cols: Sequence[str],
                           thresholds: Sequence[float] | None, ok: Sequence[bool] | np.ndarray | None = None
                           ) -> pd.DataFrame:
    """``df`` with per-film ``spread`` (standard deviation of the fold models' decision-scale
    scores, the ``<col>_fold<k>`` columns; the largest over columns) and ``uncertain`` (True
    when at least one fold model's decision differs from the ensemble's; the rule of
    :func:`medtl.stats.selective.uncertain_flags`, which needs no cut tuned on test films).
    Rows not in ``ok`` (default: rows whose ``error`` is empty) get NaN / False.

    Example:
        >>> df = with_uncertain_columns(df, [0, 1], ["score"], [0.31])
        >>> df.loc[df.uncertain, "path"].tolist()   # films to refer
    """
    if ok is None:
        ok = (df["error"] == "").to_numpy() if "error" in df.columns else np.ones(len(df), bool)
    ok = np.asarray(ok, dtype=bool)
    members = np.stack([df.loc[ok, [f"{c}_fold{f}" for c in cols]].to_numpy(dtype=np.float64) for f in folds])
    spread = np.full(len(df), np.nan)
    flag = np.zeros(len(df), dtype=bool)
    if ok.any():
        spread[ok], _, flag[ok] = uncertain_flags(members, thresholds)
    out = df.copy()
    out["spread"] = spread
    out["uncertain"] = flag
    return out


def collect_paths(files_or_folders: Iterable[str | Path]) -> list[str]:
    """Expand files and folders into the image files to predict on.

    Folders are searched recursively for DICOM, PNG, JPEG, TIFF and BMP files (by suffix, or
    by the DICOM magic bytes whatever the name, as for PACS exports named by UID); hidden
    files are ignored. Files given by name are kept whatever their suffix, so that an unreadable
    one shows up as an error row instead of vanishing.

    Raises:
        FileNotFoundError: a given path does not exist.

    Example:
        >>> collect_paths(["scans/", "extra.dcm"])
        ['scans/a/1.dcm', 'scans/b.png', 'extra.dcm']
    """
    out: list[str] = []
    for item in files_or_folders:
        p = Path(item)
        if p.is_dir():
            found = [f for f in p.rglob("*") if f.is_file() and is_image_file(f)
                     and not any(part.startswith(".") for part in f.relative_to(p).parts)]
            out += sorted(str(f) for f in found)
        elif p.exists():
            out.append(str(p))
        else:
            raise FileNotFoundError(f"{p}: no such file or folder; check the path")
    return list(dict.fromkeys(out))
