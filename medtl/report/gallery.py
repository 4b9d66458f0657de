"""The report's case gallery: the most confident true positives, false positives and false
negatives, each shown as the film and its class activation map.

Binary runs have one gallery. Multilabel and multiclass runs get one per class, judged one
class against the rest: for a label, positive means its score reached its threshold; for a
multiclass class, that it was the arg-max. Each map there shows the evidence for that class.

Maps come from :mod:`medtl.explain` with the model that did *not* train on the case (its
cross-validation fold model), at the film's own resolution, or from precomputed overlays
listed in ``RUN/overlays/overlays.csv`` (columns ``file``, ``png`` (path relative to that
folder) and ``method``). Every image is re-encoded here, so no metadata of an input PNG can
reach the report; cases are named by salted hashes only.

Example:
    >>> cases = select_cases(preds, n=4)       # preds: file, patient, group, model_dir, label, score, threshold
    >>> shown, note = render_gallery(cases, salt, classes=["normal", "lesion"])
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from medtl.explain.files import maps_for_files
from medtl.explain.overlay import overlay
from medtl.io import ImageReadError, read_image
from medtl.registry import is_perturbation, map_methods, method_kind, takes_target_layer
from medtl.report.deid import hash_patient_id, scrub_text
from medtl.report.plots import image_png
from medtl.run.files import scores_from_frame, targets_from_frame, threshold_columns
from medtl.run.layout import MODEL_FILE, OVERLAYS_FILE

NOT_COMPUTED = "CAM not computed (compute=False and no precomputed overlay)"

__all__ = ["KINDS", "Case", "class_views", "select_cases", "render_gallery", "read_overlays", "cam_overlays",
           "peak_gap", "map_grid"]

KINDS = ("true positive", "false positive", "false negative")
FILM_SIDE = 384  # pixels on the longer side of each gallery image



@dataclass
class Case:
    """One gallery case. ``patient`` and ``image`` are salted hashes, never raw ids or paths."""

    kind: str
    patient: str
    image: str
    source: str
    label: str
    score: float
    threshold: float | None  # None: multiclass, where the decision is the arg-max
    film_png: bytes | None = None
    overlay_png: bytes | None = None
    method: str | None = None
    method_reason: str = ""
    note: str = ""
    target: str = ""  # the class judged and mapped (multilabel/multiclass galleries); '' binary
    called: str = ""  # the model's decision as names (multilabel/multiclass)
    off_film: float | None = None  # share of the map's heat on the letterbox padding (not drawn)
    second_png: bytes | None = None  # the second method's overlay (``report.compare``)
    second_method: str | None = None
    second_reason: str = ""
    peak_gap: float | None = None  # the two maps' peaks apart, share of the film's longer side

    @property
    def method_kind(self) -> str:
        """The first map's kind in :mod:`medtl.registry` ("gradient" or "perturbation"); ''
        without a map or for a precomputed one by a method medtl does not know."""
        # The template asks this, not the name, so a new gradient method gets the same notes.
        return method_kind(self.method) if self.method in map_methods() else ""

    @property
    def map_grids(self) -> list[str]:
        """The grids this case's maps (first, then second) are computed on, as
        :func:`map_grid` names them; unknown methods left out."""
        return [g for g in (map_grid(self.method), map_grid(self.second_method)) if g]


def map_grid(method: str | None) -> str:
    """The grid a method's map is computed on, which sets how precise it can be: "feature map"
    (a target layer's grid: Grad-CAM and its kin, Score-CAM), "input" (pixel by pixel at the
    model's input: integrated gradients) or "patch" (the occlusion patch and step); '' for no
    method or one medtl does not know (a precomputed overlay).

    Example:
        >>> map_grid("gradcam"), map_grid("intgrad"), map_grid("occlusion")
        ('feature map', 'input', 'patch')
    """
    if method not in map_methods():
        return ""
    if takes_target_layer(method):
        return "feature map"
    return "patch" if is_perturbation(method) else "input"


def class_views(preds: pd.DataFrame, task: str, classes: Sequence[str]) -> list[pd.DataFrame]:
    """One-against-the-rest tables for :func:`select_cases`, one per class the gallery shows.

    Binary: ``preds`` itself. Multilabel: per label, its ``label``/``score``/``threshold``
    columns. Multiclass: per class, ``label`` 1 for that class, its probability as ``score``
    and ``predicted`` where it was the arg-max. Each view carries ``target`` (the class the
    map must show), ``truth`` (the image's true class or labels) and ``called`` (the model's
    decision, as names).

    Example:
        >>> [v["target"].iloc[0] for v in class_views(oof, "multilabel", ["effusion", "mass"])]
        ['effusion', 'mass']
    """
    if task == "binary":
        return [preds.assign(target="")]
    y = targets_from_frame(preds, task, classes)
    s = scores_from_frame(preds, task, classes)  # the report's tables hold the decision scale
    names = np.asarray(list(classes), dtype=object)
    if task == "multilabel":
        t = preds[threshold_columns(task, classes)].to_numpy(dtype=np.float64)
        called = s >= t
        truth = [";".join(names[row == 1]) or "none" for row in y]
        said = [";".join(names[row]) or "none" for row in called]
    else:
        t = np.full_like(s, np.nan)
        called = np.eye(len(classes), dtype=bool)[s.argmax(axis=1)]
        truth = list(names[y.argmax(axis=1)])
        said = list(names[s.argmax(axis=1)])
    keep = preds[["file", "patient", "group", "model_dir"]]
    return [keep.assign(label=y[:, k].astype(int), score=s[:, k], threshold=t[:, k], predicted=called[:, k],
                        target=str(name), truth=truth, called=said)
            for k, name in enumerate(classes)]


def select_cases(preds: pd.DataFrame, n: int) -> pd.DataFrame:
    """The ``n`` most confident cases of each kind in :data:`KINDS`.

    True and false positives are ranked by the highest score, false negatives by the lowest
    (the most confidently missed); a case is positive when ``score >= threshold`` (its own
    fold's threshold), or where a ``predicted`` column says so. Ties keep the table order.
    With a ``patient`` column, each kind shows one film per patient (that patient's most
    confident one) before a second film of anyone: films of one patient repeat the anatomy.

    Args:
        preds: one row per image with ``label`` (0/1), ``score`` and ``threshold`` (or
            ``predicted``).
        n: cases per kind.

    Returns:
        The chosen rows with a ``kind`` column, grouped in :data:`KINDS` order.

    Example:
        >>> select_cases(df, 2)["kind"].tolist()
        ['true positive', 'true positive', 'false positive', 'false negative']
    """
    need = ("label", "score") + (() if "predicted" in preds.columns else ("threshold",))
    missing = [c for c in need if c not in preds.columns]
    if missing:
        raise ValueError(f"select_cases: prediction table lacks column(s) {', '.join(missing)}")
    y = preds["label"].to_numpy()
    if "predicted" in preds.columns:
        pos = preds["predicted"].to_numpy(dtype=bool)
    else:
        pos = preds["score"].to_numpy(dtype=np.float64) >= preds["threshold"].to_numpy(dtype=np.float64)
    parts = []
    for kind, mask, descending in (("true positive", (y == 1) & pos, True),
                                   ("false positive", (y == 0) & pos, True),
                                   ("false negative", (y == 1) & ~pos, False)):
        ranked = preds[mask].sort_values("score", ascending=not descending, kind="mergesort")
        if "patient" in ranked.columns:  # each patient's most confident film first
            first = ~ranked["patient"].duplicated()
            ranked = pd.concat([ranked[first], ranked[~first]])
        part = ranked.head(max(0, int(n))).sort_values("score", ascending=not descending, kind="mergesort")
        parts.append(part.assign(kind=kind))
    return pd.concat(parts, ignore_index=True)


def read_overlays(run_dir: str | Path) -> dict[str, tuple[bytes, str]]:
    """Precomputed overlays of a run: file -> (PNG bytes, CAM method); {} when there are none.

    Raises:
        ValueError: ``overlays.csv`` lacks a column, or names a PNG that is missing.
    """
    index = Path(run_dir) / OVERLAYS_FILE
    if not index.is_file():
        return {}
    df = pd.read_csv(index, dtype=str)
    missing = [c for c in ("file", "png", "method") if c not in df.columns]
    if missing:
        raise ValueError(f"{index}: missing column(s) {', '.join(missing)}; expected file, png, method")
    out = {}
    for row in df.itertuples(index=False):
        png = index.parent / row.png
        if not png.is_file():
            raise ValueError(f"{index}: overlay {row.png!r} not found next to it; re-run the explain step")
        out[str(row.file)] = (png.read_bytes(), str(row.method))
    return out


def _reencode(png: bytes) -> bytes:
    """The pixels of a PNG, re-encoded without any metadata chunk and shrunk for the page."""
    with Image.open(io.BytesIO(png)) as im:
        return image_png(np.asarray(im.convert("RGB")), max_side=FILM_SIDE)


def cam_overlays(model_dir: str | Path, files: Sequence[str], method: str = "gradcam",
                 target_layer: str | None = None, class_name: str | None = None,
                 patch: float | None = None, stride: float | None = None,
                 ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray, float | None, np.ndarray]], Any]:
    """Film and CAM overlay at the original resolution for ``files``, with one saved model.

    Args:
        model_dir: a training run / fold folder (``model.keras`` and ``model_info.json``).
        files: image paths.
        method: the preferred method (``report.cam``); a backbone without a spatial feature
            map falls back to occlusion (see :func:`medtl.explain.cam.method_for_model`).
        target_layer: layer for the gradient methods (``report.target_layer``).
        class_name: the class whose evidence to map (default: see
            :func:`medtl.explain.files.maps_for_files`).
        patch, stride: occlusion patch and step (``report.occlusion_patch``/``_stride``).

    Returns:
        ({file: (film float (H, W) in [0, 1], overlay uint8 (H, W, 3), share of the map's heat
        on the letterbox padding (None for a film that was not padded), the map float (H, W)
        in [0, 1])}, the method used, a str carrying ``.reason``).
    """
    model_path = Path(model_dir) / MODEL_FILE
    if not model_path.is_file():  # checked before TensorFlow is imported, for a quick clear note
        raise FileNotFoundError(f"{model_path}: no saved model; the run folder is incomplete")
    from medtl.explain.cam import MethodChoice  # why: loads TensorFlow; a report without maps must not wait for it

    fm = maps_for_files(model_dir, files, method=method, target_layer=target_layer, class_name=class_name,
                        patch=patch, stride=stride)
    if fm.errors:
        path, reason = next(iter(fm.errors.items()))
        raise ValueError(reason if path in reason else f"{path}: {reason}")
    # A film that filled the canvas has no padding to hold heat: no share to show (None).
    out = {f: (fm.films[f], overlay(fm.films[f], fm.maps[f]), fm.off_film[f] if fm.padded[f] else None,
               fm.maps[f]) for f in files}
    return out, MethodChoice(fm.method, fm.reason)


def _peak(m: np.ndarray) -> tuple[int, int] | None:
    if not np.isfinite(m).all() or m.max() <= 0:
        return None
    r, c = np.unravel_index(int(np.argmax(m)), m.shape)
    return int(r), int(c)


def peak_gap(a: np.ndarray | None, b: np.ndarray | None) -> float | None:
    """Distance between the hottest pixels of two maps of one film, as a share of its longer side.

    The report gives it beside the two maps and sets no threshold on it: a peak is only as
    precise as its method (a Grad-CAM cell, an occlusion step), so a few per cent mean the same
    place, and the warm regions are what to compare.

    Args:
        a, b: (H, W) maps of the same film; None for a map that is not at hand.

    Returns:
        The share (0 to 1.42), or None when a map is missing, differs in shape or has no heat.
    """
    if a is None or b is None or a.shape != b.shape:
        return None
    pa, pb = _peak(a), _peak(b)
    if pa is None or pb is None:
        return None
    return float(np.hypot(pa[0] - pb[0], pa[1] - pb[1]) / max(a.shape))


def render_gallery(
    cases: pd.DataFrame,
    salt: bytes,
    classes: Sequence[str] = ("negative", "positive"),
    method: str = "gradcam",
    target_layer: str | None = None,
    overlays: Mapping[str, tuple[bytes, str]] | None = None,
    compute: bool = True,
    occlusion: Mapping[str, float | None] | None = None,
    compare: str | None = None,
    read: Mapping[str, Any] | None = None,
) -> tuple[list[Case], str]:
    """Turn chosen cases into gallery entries with film, overlay, score and label.

    A case takes its overlay from ``overlays`` when given there (binary runs only: a
    precomputed overlay does not say which class it maps), else (with ``compute``) from
    :func:`cam_overlays` with the model in its ``model_dir``, for the case's ``target`` class.
    With ``compare``, each case also gets a second map by that method, and the distance
    between the two maps' peaks (:func:`peak_gap`): where a gradient map and an occlusion map
    point to different places, neither should be read alone. Whatever fails is said on the
    case (``note``), never dropped silently.

    Args:
        cases: rows from :func:`select_cases` (``file``, ``patient``, ``group``, ``model_dir``,
            ``label``, ``score``, ``threshold``, ``kind``; from :func:`class_views` also
            ``target``, ``truth`` and ``called``).
        salt: the run's salt for the patient and image hashes.
        classes: class names (index = label).
        method: preferred CAM method (``report.cam``).
        target_layer: layer for the gradient methods.
        overlays: precomputed file -> (PNG bytes, method).
        compute: compute missing overlays with :mod:`medtl.explain` (needs TensorFlow).
        occlusion: ``patch`` and ``stride`` for occlusion maps (``report.occlusion_*``).
        compare: a second method to map each case with (``report.compare``).
        read: how films shown without a computed map are read: ``window``, ``frame`` and
            ``max_pixels`` as the run read them (``data.*``), so a multi-frame film shows
            the frame the model saw.

    Returns:
        (cases, a note for the whole gallery, '' when all is well).
    """
    overlays = dict(overlays or {})
    if "target" not in cases.columns:
        cases = cases.assign(target="")
    shown: list[Case] = []
    for row in cases.itertuples(index=False):
        label = int(row.label)
        truth = getattr(row, "truth", None)
        threshold = float(row.threshold) if "threshold" in cases.columns else float("nan")
        shown.append(Case(
            kind=row.kind, patient=hash_patient_id(row.patient, salt), image=hash_patient_id(row.file, salt),
            source=str(row.group),
            label=str(truth) if truth is not None else (str(classes[label]) if label < len(classes) else str(label)),
            score=float(row.score), threshold=None if threshold != threshold else threshold,
            target=str(row.target), called=str(getattr(row, "called", ""))))
    if not shown:
        return shown, "No case to show: no true positive, false positive or false negative."

    computed: dict[tuple[str, str], tuple] = {}
    methods: dict[tuple[str, str], Any] = {}
    failures: dict[tuple[str, str], str] = {}
    second: dict[tuple[str, str], tuple] = {}
    second_methods: dict[tuple[str, str], Any] = {}
    usable = cases["target"].eq("") & cases["file"].isin(list(overlays))  # precomputed: binary only
    passes = [(method, cases[~usable], computed, methods, "CAM")]
    if compare is not None:  # precomputed first maps too: the model is there to map them again
        passes.append((compare, cases, second, second_methods, "second map"))
    for name, todo, got_into, methods_into, what in passes if compute else ():
        for (model_dir, target), part in todo.groupby(["model_dir", "target"], sort=False):
            files = [f for f in dict.fromkeys(part["file"]) if (f, target) not in failures]
            if not files:  # the first map failed already; the case says why
                continue
            try:
                got, choice = cam_overlays(
                    model_dir, files, name, target_layer if takes_target_layer(name) else None,
                    class_name=target or None, **(dict(occlusion or {}) if is_perturbation(name) else {}))
            except Exception as exc:  # noqa: BLE001 - the reason is shown on each case
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                # Paths may carry names: the report names images by hash only.
                reason = scrub_text(reason, {f: f"[image {hash_patient_id(f, salt)}]" for f in files})
                failures.update({(f, target): f"{what} not computed: {type(exc).__name__}: {reason}"
                                 for f in files})
                continue
            got_into.update({(f, target): v for f, v in got.items()})
            methods_into.update({(f, target): choice for f in files})

    for case, row, pre in zip(shown, cases.itertuples(index=False), usable):
        f, key = str(row.file), (str(row.file), str(row.target))
        first_map = None
        if pre:
            png, case.method = overlays[f]
            case.overlay_png = _reencode(png)
            case.method_reason = "precomputed"
        elif key in computed:
            film, over, off, first_map = computed[key]
            case.off_film = None if off is None or np.isnan(off) else off  # nan: no heat at all
            case.film_png = image_png(film, FILM_SIDE)
            case.overlay_png = image_png(over, FILM_SIDE)
            case.method = str(methods[key])
            case.method_reason = getattr(methods[key], "reason", "")
        else:
            case.note = failures.get(key, NOT_COMPUTED)
        if key in second and str(second_methods[key]) == case.method:
            # A backbone without a feature map gets occlusion whichever method is asked. Not a
            # problem with the case (no note, so no warning): the second map has nothing to add.
            case.second_reason = f"not drawn: it would repeat the {case.method} map"
        elif key in second:
            _, over2, _, second_map = second[key]
            case.second_png = image_png(over2, FILM_SIDE)
            case.second_method = str(second_methods[key])
            case.second_reason = getattr(second_methods[key], "reason", "")
            case.peak_gap = peak_gap(first_map, second_map)
        elif (pre or key in computed) and key in failures:
            case.note = failures[key]
        if case.film_png is None:
            case.film_png, film_note = _film(f, read)
            if film_note:
                case.note = f"{case.note}; {film_note}" if case.note else film_note
    notes = sorted({c.note for c in shown if c.note.startswith("CAM not computed")})
    return shown, " ".join(notes)


def _film(path: str, read: Mapping[str, Any] | None = None) -> tuple[bytes | None, str]:
    """The film as the page shows it, read with the run's settings, or a note saying why not."""
    try:
        return image_png(read_image(path, **dict(read or {})), FILM_SIDE), ""
    except FileNotFoundError:
        return None, "film not found where the run read it"
    except ImageReadError as exc:
        return None, f"film unreadable: {exc.reason}"
