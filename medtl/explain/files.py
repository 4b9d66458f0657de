"""Heat maps for image files with a trained run: what ``medtl explain`` and the report use.

A training run (or a ``.keras`` file) explains with its one model; a cross-validation run
explains with every fold model and averages their maps, the same ensemble that scores the
file in ``medtl predict``. Every member maps the same class for a file, chosen once from the
ensemble's scores (fold models can disagree on the top class, and an average of maps of
different classes would explain neither). Maps are returned at the film's own resolution
(letterbox padding and resize undone) and drawn over the windowed original film.

Example:
    >>> df = explain_paths("runs/demo/cv-1a2b3c", ["a.dcm", "b.dcm"], "cams/")
    >>> df[["path", "png", "method", "score"]]
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import yaml

from medtl.explain.dicom_out import new_series_uid, write_overlay_sc
from medtl.io.dicom import is_dicom
from medtl.io.dicom_results import load_highdicom, not_dicom_note
from medtl.io.errors import one_line
from medtl.io.image import IMAGE_SUFFIXES, read_image
from medtl.io.pseudonyms import hash_patient_id, run_salt
from medtl.registry import DEFAULT_METHOD, PERTURBATION, is_perturbation, map_methods, takes_target_layer
from medtl.run.files import score_columns
from medtl.run.layout import EXPLANATIONS_FILE
from medtl.run.predictor import Predictor

__all__ = ["FileMaps", "maps_for_files", "faithfulness_for_files", "explain_paths", "overlay_stem", "OFF_FILM_NOTE"]

#: From this share of a map's heat on the padding on, ``medtl explain`` and the report say so.
OFF_FILM_NOTE = 0.25


@dataclass
class FileMaps:
    """Maps for a list of files: film and map at original resolution, per file."""

    films: dict[str, np.ndarray]
    maps: dict[str, np.ndarray]
    errors: dict[str, str]
    method: str
    reason: str
    #: The class (or label) each file's map shows evidence for.
    classes: dict[str, str] = field(default_factory=dict)
    #: ``medtl predict``'s table for the readable files (None when there were none).
    scores: pd.DataFrame | None = None
    #: Share of each map's heat on the letterbox padding, which the film-sized map crops off.
    off_film: dict[str, float] = field(default_factory=dict)
    #: Whether each film was letterboxed (padded) on the canvas; without padding off_film is 0.
    padded: dict[str, bool] = field(default_factory=dict)


def _map_classes(task: str, classes: Sequence[str], scores: np.ndarray,
                 class_name: str | None, predicted: Sequence[str] = ()) -> list[int]:
    """Class index per image for the CAM: the named class, else binary: the positive class;
    multiclass: the ensemble's predicted class; multilabel: its highest-scoring label.
    ``predicted`` (the ensemble's decision per image) serves ``class_name="predicted"``."""
    names = list(classes)
    if class_name == "predicted" and task == "binary":
        return [names.index(p) for p in predicted]
    if class_name not in (None, "predicted"):  # "predicted" otherwise: the default below
        return [names.index(class_name)] * len(scores)
    if task == "binary":
        return [1] * len(scores)
    return [int(i) for i in np.asarray(scores).argmax(axis=1)]


def maps_for_files(
    run_or_model: str | Path,
    paths: Sequence[str | Path],
    method: str = "gradcam",
    target_layer: str | None = None,
    batch_size: int = 16,
    class_name: str | None = None,
    patch: float | None = None,
    stride: float | None = None,
) -> FileMaps:
    """Class activation maps of ``paths`` at each film's own resolution.

    Args:
        run_or_model: a CV run, a fold or training run folder, or a ``.keras`` file.
        paths: image files (DICOM, PNG, JPEG).
        method: a name of :func:`medtl.registry.map_methods`; a backbone without a spatial
            feature map (TF Hub) falls back to occlusion, and ``reason`` says so.
        target_layer: layer for the gradient methods (default: the last feature map).
        batch_size: images per CAM batch.
        class_name: the class whose evidence to map, or ``"predicted"`` (binary: the class
            the ensemble decided for each film at its threshold); default binary: the positive
            class, multiclass: the predicted class, multilabel: the highest-scoring label (each
            decided by the whole ensemble, so all its members map the same class).
        patch: occlusion patch side as a fraction of the image side (default 0.125); not used
            by the gradient methods.
        stride: occlusion step as a fraction of the image side (default half the patch).

    Returns:
        A :class:`FileMaps`; unreadable files are listed in ``errors``, never dropped.
    """
    from medtl.data.pipeline import ImagePipeline  # why: loads TensorFlow, which only computing maps needs
    from medtl.explain.cam import (  # why: loads TensorFlow, which only computing maps needs
        compute_cam, explain_for_original, method_for_model, off_film_share,
    )

    predictor = Predictor(run_or_model)
    if class_name not in (None, "predicted", *predictor.classes):
        raise ValueError(f"class {class_name!r}: not a class of this model; choose one of "
                         f"{', '.join(predictor.classes)}")
    pipe = ImagePipeline(predictor.pipeline_config())
    # The film under the map is read as the model read it: same window, same frame of a
    # multi-frame file, same pixel limit (older runs saved no frame / max_pixels: the defaults).
    prep = predictor.info.get("preprocessing", {})
    read = {k: prep[k] for k in ("window", "frame", "max_pixels") if k in prep}
    loaded, errors = {}, {}
    for p in map(str, paths):
        try:
            loaded[p] = pipe.load(p)
        except Exception as exc:  # noqa: BLE001 - reported per file
            errors[p] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    ok = list(loaded)
    targets: list[int] = []
    scores = None
    if ok:  # the ensemble's scores, exactly as medtl predict gives them
        scores = predictor.predict_paths(ok, batch_size=batch_size)
        cols = score_columns(predictor.task, predictor.classes)
        targets = _map_classes(predictor.task, predictor.classes, scores[cols].to_numpy(dtype=np.float64),
                               class_name, scores["prediction"].astype(str).tolist())
    total: np.ndarray | None = None
    choice = None
    occlusion = {k: v for k, v in (("patch", patch), ("stride", stride)) if v is not None}
    for model in predictor.models():
        choice = method_for_model(model, method)
        if ok:
            maps = compute_cam(
                model, np.stack([loaded[p][0] for p in ok]),
                method=str(choice),
                target_layer=target_layer if takes_target_layer(choice) else None,
                class_index=targets,
                batch_size=batch_size,
                **(occlusion if is_perturbation(choice) else {}),
            )
            total = maps if total is None else total + maps
    films, out, off, padded = {}, {}, {}, {}
    for i, p in enumerate(ok):
        m, geo = total[i] / len(predictor.members), loaded[p][1]
        films[p] = read_image(p, **read)
        out[p] = explain_for_original(m, geo)
        off[p] = off_film_share(m, geo)
        padded[p] = (geo.new_h, geo.new_w) != (geo.target_h, geo.target_w)
    shown = {p: predictor.classes[t] for p, t in zip(ok, targets)}
    reason = getattr(choice, "reason", "")
    if choice is not None and is_perturbation(choice):  # the report shows what its resolution depends on
        side = 0.125 if patch is None else patch
        reason += f"; patch {side:g}, step {side / 2 if stride is None else stride:g} of the image side"
    return FileMaps(films, out, errors, str(choice), reason, shown, scores, off, padded)


def faithfulness_for_files(
    run_or_model: str | Path,
    paths: Sequence[str | Path],
    methods: Sequence[str],
    class_names: Sequence[str] | None = None,
    target_layer: str | None = None,
    patch: float | None = None,
    stride: float | None = None,
    groups: Sequence[str] | None = None,
    steps: int = 10,
    n_boot: int = 1000,
    seed: int = 0,
    batch_size: int = 16,
) -> dict:
    """:func:`medtl.explain.faithfulness.faithfulness` of ``paths`` with the (first) model of
    ``run_or_model``, each film read as the model read it.

    Args:
        run_or_model: a fold or training run folder, or a ``.keras`` file.
        paths: image files, read at the model's input size.
        methods: map methods; a backbone without a spatial feature map gets occlusion instead
            (as in :func:`maps_for_files`), and repeats are dropped.
        class_names: the class to score per film (default binary: the positive class).
        target_layer, patch, stride: as for :func:`maps_for_files`.
        groups, steps, n_boot, seed, batch_size: as for ``faithfulness``.
    """
    from medtl.data.pipeline import ImagePipeline  # why: loads TensorFlow, which only computing maps needs
    from medtl.explain.cam import method_for_model  # why: loads TensorFlow, as above
    from medtl.explain.faithfulness import faithfulness  # why: loads TensorFlow, as above

    predictor = Predictor(run_or_model)
    pipe = ImagePipeline(predictor.pipeline_config())
    x = np.stack([pipe.load(str(p))[0] for p in paths])
    model = predictor.models()[0]
    chosen = list(dict.fromkeys(str(method_for_model(model, m)) for m in methods))
    options: dict[str, dict] = {}
    for m in chosen:
        if takes_target_layer(m) and target_layer:
            options[m] = {"target_layer": target_layer}
        elif is_perturbation(m):
            options[m] = {k: v for k, v in (("patch", patch), ("stride", stride)) if v is not None}
    index = None if class_names is None else [predictor.classes.index(c) for c in class_names]
    return faithfulness(model, x, chosen, class_index=index, steps=steps, seed=seed, groups=groups,
                        n_boot=n_boot, batch_size=batch_size, options=options)


def explain_paths(
    run_or_model: str | Path,
    paths: Sequence[str | Path],
    out_dir: str | Path,
    method: str | None = None,
    target_layer: str | None = None,
    batch_size: int = 16,
    class_name: str | None = None,
    save_maps: bool = False,
    patch: float | None = None,
    stride: float | None = None,
    keep_names: bool = False,
    dicom_out: str | Path | None = None,
) -> pd.DataFrame:
    """Write a heat-map overlay PNG per file and ``explanations.csv`` into ``out_dir``.

    Overlays are named ``<hash>_<method>.png``, the hash a salted hash of the input path keyed
    by the run's salt (``deid.salt``), because file names often carry a patient's name or
    record number; ``keep_names`` names them after the input files instead. The ``path``
    column of ``explanations.csv`` links the two, so that table stays local.

    Args:
        run_or_model: a CV run, a fold or training run folder, or a ``.keras`` file.
        paths: image files.
        out_dir: output folder (created).
        method: CAM method; default the run's ``report.cam``.
        target_layer: layer for the gradient methods; default the run's ``report.target_layer``.
        batch_size: images per CAM batch.
        class_name: the class to map (default: see :func:`maps_for_files`).
        save_maps: also write each map at the film's resolution as a 16-bit greyscale PNG
            (see :func:`medtl.explain.overlay.write_map_png`), named in the map_png column.
        patch, stride: occlusion patch and step (fractions of the image side); default the
            run's ``report.occlusion_patch`` and ``report.occlusion_stride``.
        keep_names: name the PNGs after the input files (``DOE_JOHN.dcm`` ->
            ``DOE_JOHN_gradcam.png``) instead of by salted hash; not for sharing.
        dicom_out: also write each DICOM film's overlay, captioned "research use, not for
            diagnosis", as a Secondary Capture in the film's study into this folder (one new
            series per call, files named by SOPInstanceUID, see
            :mod:`medtl.explain.dicom_out`); they keep the patient's identity, for the
            hospital's own PACS only. PNG/JPEG inputs are skipped with a note.

    Returns:
        One row per file: path, png, map_png ('' unless ``save_maps``), method, map_class (the
        class the map is for), heat_off_film (share of the map's heat on the letterbox padding,
        which the overlay cannot show), error, score column(s), prediction; with ``dicom_out``
        also dicom_out (the file written, or why none was).
    """
    # why: the overlay module loads OpenCV and matplotlib, which only drawing needs
    from medtl.explain.overlay import overlay, write_map_png, write_png

    run_cfg = _run_report_settings(run_or_model)
    method = method or run_cfg.get("cam", DEFAULT_METHOD)
    target_layer = target_layer or run_cfg.get("target_layer")
    if (patch is not None or stride is not None) and not is_perturbation(method):
        names = map_methods(PERTURBATION)  # the methods that take a patch and a step
        raise ValueError(f"patch/stride are for {' / '.join(names)} maps and the method is {method}; "
                         f"choose method {names[0]} (--method {names[0]}) or leave them out")
    patch = patch if patch is not None else run_cfg.get("occlusion_patch")
    stride = stride if stride is not None else run_cfg.get("occlusion_stride")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fm = maps_for_files(run_or_model, paths, method=method, target_layer=target_layer, batch_size=batch_size,
                        class_name=class_name, patch=patch, stride=stride)
    rows = []
    used: set[str] = set()
    series = _dicom_series(dicom_out)
    salt = None if keep_names else run_salt(_run_folder(run_or_model))
    for i, p in enumerate(map(str, paths)):
        row = {"path": p, "png": "", "map_png": "", "method": fm.method, "map_class": fm.classes.get(p, ""),
               "heat_off_film": round(fm.off_film[p], 4) if p in fm.off_film else np.nan,
               "error": fm.errors.get(p, "")}
        if p in fm.films:
            name = _unique(overlay_stem(p, salt), used) + f"_{fm.method.replace('+', 'p')}"
            rgb = overlay(fm.films[p], fm.maps[p])
            write_png(rgb, out / f"{name}.png")
            row["png"] = f"{name}.png"
            if series is not None:
                row["dicom_out"] = _write_dicom(p, rgb, dicom_out, series, len(rows) + 1, fm, run_or_model)
            if save_maps:
                write_map_png(fm.maps[p], out / f"{name}_map.png")
                row["map_png"] = f"{name}_map.png"
            srow = fm.scores[fm.scores["path"] == p].iloc[0]
            for col in srow.index:
                if col.startswith("score") or col == "prediction":
                    row[col] = srow[col]
        elif series is not None:
            row["dicom_out"] = "skipped: the film could not be read (see the error column)"
        rows.append(row)
    df = pd.DataFrame(rows)
    df.to_csv(out / EXPLANATIONS_FILE, index=False)
    return df


def _dicom_series(dicom_out: str | Path | None) -> str | None:
    """A new series UID for this call's Secondary Captures, or None without ``dicom_out``;
    checks that highdicom is there before any map is drawn."""
    if dicom_out is None:
        return None
    load_highdicom()
    return new_series_uid()


def _write_dicom(path: str, rgb: np.ndarray, dicom_out: str | Path, series: str, number: int, fm: FileMaps,
                 run_or_model: str | Path) -> str:
    """Write one overlay as a Secondary Capture; the file's name, or why there is none (a
    PNG/JPEG input, a DICOM without UIDs): noted per film, never failing the call."""
    if not is_dicom(path):
        return not_dicom_note(path)
    what = (f"{fm.method} heat map of the evidence for class {fm.classes.get(path, '?')}, "
            f"medtl model {run_or_model}")
    try:
        return write_overlay_sc(path, rgb, dicom_out, series, number, what).name
    except (ValueError, OSError) as exc:
        return f"skipped: {one_line(exc, 200)}"


def overlay_stem(path: str, salt: bytes | None) -> str:
    """The stem of a file's overlay: the salted hash of its path, or with ``salt`` None the
    file name without an image suffix (a UID-named DICOM keeps its whole name)."""
    if salt is not None:
        return hash_patient_id(str(path), salt)
    name = Path(path).name
    base, ext = os.path.splitext(name)
    return base if ext.lower() in IMAGE_SUFFIXES else name


def _unique(stem: str, used: set[str]) -> str:
    name, k = stem, 1
    while name in used:
        k += 1
        name = f"{stem}_{k}"
    used.add(name)
    return name


def _run_folder(run_or_model: str | Path) -> Path:
    """The folder whose salt names the overlays: the run folder, or a ``.keras`` file's folder."""
    p = Path(run_or_model)
    return p if p.is_dir() else p.parent


def _run_report_settings(run_or_model: str | Path) -> dict:
    """``report`` settings of the run's saved config, if there is one."""
    p = Path(run_or_model)
    folder = p if p.is_dir() else p.parent
    for cand in (folder / "config.yaml", folder.parent / "config.yaml"):
        if cand.is_file():
            raw = yaml.safe_load(cand.read_text()) or {}
            return dict(raw.get("report") or {})
    return {}
