"""Typed run configuration: one YAML file describes a run.

The YAML is parsed into dataclasses, defaults are filled in, and anything unknown or of the
wrong type is rejected with a one-line error naming the key, the bad value and what is allowed.

Example:
    >>> from medtl.config import load_config
    >>> cfg = load_config("configs/demo.yaml", overrides=["train.batch_size=8"])
    >>> cfg.train.batch_size
    8

Path rule: ``data.manifest``, ``data.root``, a ``model.weights`` file and a local
``hub:./path`` backbone are resolved against the folder of the YAML file (a config travels with its data); ``data.cache_dir`` and ``output_dir`` are work products
and are resolved against the current directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from medtl.registry import DEFAULT_METHOD as _DEFAULT_METHOD
from medtl.registry import map_methods as _map_methods
from medtl.stats.thresholds import parse_threshold_rule as _parse_threshold_rule


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key and the fix."""


Task = Literal["binary", "multiclass", "multilabel"]
# Taken from the registry, so a new method needs no edit here; a Literal keeps the validation
# and its error message ("expected gradcam | gradcam++ | ...") the same as for other choices.
CamMethod = Literal[_map_methods()]  # type: ignore[valid-type]
#: The heat-map methods of ``report.cam`` / ``report.compare`` (and ``medtl explain --method``).
CAM_METHODS: tuple[str, ...] = get_args(CamMethod)


@dataclass
class DataConfig:
    """Where the images and labels are and how images are turned into model input."""

    manifest: str = ""
    root: str | None = None
    path_column: str = "file"
    label_column: Union[str, list[str]] = "label"
    # multilabel from one column of names joined by this (NIH ChestX-ray14: "Effusion|Mass")
    label_separator: str | None = None
    patient_column: str | None = None
    classes: list[str] | None = None
    image_size: list[int] = field(default_factory=lambda: [224, 224])
    keep_aspect: bool = True
    window: Literal["auto", "minmax", "percentile"] = "auto"
    # multi-frame DICOM/TIFF: which frame to read (0 = the first); null refuses such files
    frame: int | None = None
    # larger images are refused (JPEG: decoded at 1/2..1/8 scale); = medtl.io.DEFAULT_MAX_PIXELS
    max_pixels: int | None = 50_000_000
    cache_dir: str = ".medtl-cache"
    on_error: Literal["fail", "skip"] = "fail"
    # boxes or masks CSV (medtl.data.annotations): the report scores where the maps point
    annotations: str | None = None
    val_fraction: float = 0.2
    workers: int = 0


@dataclass
class AugmentConfig:
    """Training-time augmentation: a named preset plus optional extra albumentations transforms,
    then optional mixup/cutmix of whole batches."""

    # chest_xray_robust: chest_xray plus acquisition changes (CLAHE, sharpen, JPEG, down/up-sampling);
    # the default since it held better under shift on the proxy in three seeds (README ablation)
    preset: Literal["none", "light", "chest_xray", "chest_xray_robust"] = "chest_xray_robust"
    transforms: list[dict] = field(default_factory=list)
    hflip: bool = False
    # Batch mixing of training films (medtl.data.mixing): alpha of Beta(alpha, alpha), 0 = off.
    # Both > 0: each batch uses one of the two, with probability 1/2.
    mixup: float = 0.0
    cutmix: float = 0.0


@dataclass
class ModelConfig:
    """The backbone and the classifier head."""

    backbone: str = "resnet50"
    weights: str = "imagenet"
    dropout: float = 0.2
    pooling: Literal["avg", "max"] = "avg"


@dataclass
class LossConfig:
    """Loss and class weighting for imbalanced data."""

    name: Literal["bce", "cce", "focal"] = "bce"  # not given: cce for task multiclass
    class_weight: Union[Literal["balanced", "none"], dict[str, float]] = "balanced"
    label_smoothing: float = 0.0
    gamma: float = 2.0
    alpha: float | None = None


@dataclass
class StageConfig:
    """One fine-tuning stage: what is trainable, for how long, how fast."""

    unfreeze: Union[Literal["head", "all"], int] = "head"
    epochs: int = 5
    lr: float = 1e-3
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"
    schedule: Literal["constant", "cosine"] = "constant"
    weight_decay: float = 0.0


def _default_stages() -> list[StageConfig]:
    return [
        StageConfig("head", 5, 1e-3),
        StageConfig(2, 5, 1e-4),
        StageConfig("all", 5, 1e-5),
    ]


@dataclass
class TrainConfig:
    """Staged fine-tuning, early stopping and hardware settings."""

    batch_size: int = 16
    loss: LossConfig = field(default_factory=LossConfig)
    stages: list[StageConfig] = field(default_factory=_default_stages)
    monitor: str = "val_roc_auc"
    patience: int = 3
    mixed_precision: Literal["auto", "on", "off"] = "auto"
    xla: bool = False
    distribute: Literal["auto", "none", "mirrored"] = "auto"
    feature_cache: bool = True
    # Average the weights of the last stage's epochs ending at the best one (medtl.train.swa);
    # kept only if it validates at least as well as the best epoch. 0: off.
    swa_epochs: int = 0
    # Discriminative learning rates (medtl.train.block_lr): in stages that train backbone blocks
    # the head trains at the stage's lr, the top block at lr*d, the next at lr*d**2 ... 1: off.
    block_lr_decay: float = 1.0
    # TensorBoard event files are always written; mlflow also logs to MLflow (medtl.train.tracking).
    log_to: Literal["tensorboard", "mlflow"] = "tensorboard"
    # MLflow tracking URI; None: $MLFLOW_TRACKING_URI, else a file store <output_dir>/mlruns.
    mlflow_uri: str | None = None


@dataclass
class EvaluateConfig:
    """Cross-validation, threshold choice and calibration."""

    folds: int = 5
    # fixed:0.5 with the class-balanced loss: the cut the training loss already balances, which
    # held better under shift than cuts chosen on a small validation split (README ablation)
    threshold: str = "fixed:0.5"
    calibration: Literal["none", "temperature", "platt"] = "none"
    bootstrap: int = 1000
    final_model: Literal["ensemble", "retrain"] = "ensemble"
    # Where the deployed model's threshold comes from: the median of the folds' validation
    # thresholds, or the rule applied once to the pooled out-of-fold scores of every film
    # (medtl.evaluate.pooling; written at merge). The CV figures use each fold's own either way.
    ensemble_threshold: Literal["median", "pooled"] = "median"
    # A logistic regression on the ImageNet backbone's pooled features, scored beside each fold
    # (medtl.evaluate.probe): shows whether fine-tuning was worth it. Costs one backbone pass.
    linear_probe: bool = False


@dataclass
class PredictConfig:
    """Scoring finished models (predict, evaluate, the CV test folds)."""

    # Test-time augmentation (medtl.run.tta): raw scores averaged over views. flip needs
    # augment.hflip: true (chest films are not left-right symmetric).
    tta: Literal["none", "flip", "shift", "flip+shift"] = "none"


@dataclass
class ReportConfig:
    """The HTML report and its heat maps."""

    # Grad-CAM by default: Grad-CAM++ fails the model-randomisation sanity check (tests/explain).
    cam: CamMethod = _DEFAULT_METHOD  # type: ignore[assignment]
    target_layer: str | None = None
    # Occlusion: patch side and step as fractions of the image side (step None: half the patch).
    occlusion_patch: float = 0.125
    occlusion_stride: float | None = None
    # A second map per gallery case, by another method, to check the first against.
    compare: CamMethod | None = None
    cases: int = 4
    pdf: bool = False
    # What the model card says the model is for (None: research use only, not for clinical use).
    intended_use: str | None = None


@dataclass
class Config:
    """A whole run. See the module docstring for how to load one."""

    name: str = "medtl-run"
    seed: int = 42
    task: Task = "binary"
    output_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (YAML/JSON serialisable) of the resolved config."""
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        """The resolved config as YAML text."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --------------------------------------------------------------------------------------------
# Parsing and validation


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(str(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp) if a is not type(None)) + (
            " or null" if type(None) in get_args(tp) else ""
        )
    if origin is list:
        return f"a list of {_describe(get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against type ``tp`` and convert where YAML is lax (e.g. '1e-3')."""
    origin = get_origin(tp)
    bad = ConfigError(f"{key}: invalid value {value!r}; expected {_describe(tp)}")
    if tp is Any:
        return value
    if origin is Literal:
        if value in get_args(tp) and not isinstance(value, bool):
            return value
        raise bad
    if origin in (Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in get_args(tp):
                return None
        for arg in get_args(tp):
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise bad
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise bad
        return _build(tp, value, key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise bad
        (item_tp,) = get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        _, val_tp = get_args(tp)
        return {str(k): _coerce(v, val_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # PyYAML reads '1e-3' (no dot) as a string
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad
    if tp is dict:
        if isinstance(value, dict):
            return value
        raise bad
    raise bad


def _build(cls: type, raw: dict, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; allowed keys: {', '.join(names)}"
            raise ConfigError(f"unknown config key '{full}'{hint}")
        kwargs[key] = _coerce(value, hints[key], full)
    obj = cls(**kwargs)
    return obj


def _validate(cfg: Config) -> None:
    """Checks across keys that types alone cannot express."""
    d = cfg.data
    if len(d.image_size) != 2 or min(d.image_size) < 16:
        raise ConfigError(
            f"data.image_size: invalid value {d.image_size!r}; expected [height, width], each >= 16"
        )
    if not 0.0 < d.val_fraction < 0.9:
        raise ConfigError(f"data.val_fraction: invalid value {d.val_fraction!r}; expected 0 < x < 0.9")
    if d.workers < 0:
        raise ConfigError(f"data.workers: invalid value {d.workers!r}; expected 0 (all cores) or more")
    if d.frame is not None and d.frame < 0:
        raise ConfigError(f"data.frame: invalid value {d.frame!r}; expected a frame index >= 0 (0 = the first), "
                          "or null to refuse multi-frame files")
    if d.max_pixels is not None and d.max_pixels < 1:
        raise ConfigError(f"data.max_pixels: invalid value {d.max_pixels!r}; expected a pixel count >= 1, "
                          "e.g. 50000000, or null for no limit")
    if d.label_separator is not None:
        if cfg.task != "multilabel":
            raise ConfigError(f"data.label_separator: only for task multilabel (task is {cfg.task}); remove it")
        if not d.label_separator:  # YAML reads a bare | as an empty block scalar
            raise ConfigError("data.label_separator: empty; quote it, e.g. label_separator: '|' "
                              "(--set \"data.label_separator='|'\")")
        if isinstance(d.label_column, list):
            raise ConfigError(
                f"data.label_separator: {d.label_separator!r} needs one data.label_column holding the finding "
                "names joined by it (e.g. label_column: Finding Labels, label_separator: '|')"
            )
        if not d.classes:
            raise ConfigError(
                f"data.classes: missing; with data.label_separator list the findings to learn from column "
                f"{d.label_column!r}, e.g. [Effusion, Mass] (other names in it count as no finding)"
            )
    elif cfg.task == "multilabel" and not isinstance(d.label_column, list):
        raise ConfigError(
            f"data.label_column: invalid value {d.label_column!r} for task multilabel; "
            "expected a list of label columns, one per finding, or one column of names with data.label_separator"
        )
    if cfg.task != "multilabel" and isinstance(d.label_column, list):
        raise ConfigError(
            f"data.label_column: a list is only allowed with task: multilabel (task is {cfg.task})"
        )
    if cfg.train.batch_size < 1:
        raise ConfigError(f"train.batch_size: invalid value {cfg.train.batch_size}; expected >= 1")
    if not cfg.train.stages:
        raise ConfigError("train.stages: empty; give at least one stage, e.g. {unfreeze: head, epochs: 5, lr: 1e-3}")
    for i, st in enumerate(cfg.train.stages):
        if isinstance(st.unfreeze, int) and st.unfreeze < 1:
            raise ConfigError(
                f"train.stages[{i}].unfreeze: invalid value {st.unfreeze}; expected head, all or a number of blocks >= 1"
            )
        if st.epochs < 1:
            raise ConfigError(f"train.stages[{i}].epochs: invalid value {st.epochs}; expected >= 1")
        if st.lr <= 0:
            raise ConfigError(f"train.stages[{i}].lr: invalid value {st.lr}; expected > 0")
    if cfg.train.swa_epochs < 0 or cfg.train.swa_epochs == 1:
        raise ConfigError(f"train.swa_epochs: invalid value {cfg.train.swa_epochs}; expected 0 (off) or >= 2 "
                          "(the number of epochs up to the best one to average, e.g. 3)")
    if not 0.0 < cfg.train.block_lr_decay <= 1.0:  # also refuses nan
        raise ConfigError(f"train.block_lr_decay: invalid value {cfg.train.block_lr_decay!r}; expected 0 < x <= 1 "
                          "(1 = off; e.g. 0.5: each backbone block trains at half the rate of the block above)")
    if cfg.train.loss.name == "cce" and cfg.task == "binary":
        raise ConfigError("train.loss.name: cce needs task multiclass; use bce or focal for binary")
    if cfg.train.loss.name == "bce" and cfg.task == "multiclass":
        raise ConfigError("train.loss.name: bce is for binary/multilabel; use cce or focal for multiclass")
    if not 0.0 <= cfg.train.loss.label_smoothing < 0.5:
        raise ConfigError(
            f"train.loss.label_smoothing: invalid value {cfg.train.loss.label_smoothing}; expected 0 <= x < 0.5"
        )
    for key in ("mixup", "cutmix"):
        alpha = getattr(cfg.augment, key)
        if not 0.0 <= alpha < float("inf"):  # also refuses nan
            raise ConfigError(f"augment.{key}: invalid value {alpha!r}; expected a finite alpha >= 0 "
                              "(0 = off; e.g. 0.2)")
    r = cfg.report
    if not 0.0 < r.occlusion_patch <= 1.0:
        raise ConfigError(f"report.occlusion_patch: invalid value {r.occlusion_patch!r}; expected 0 < x <= 1 "
                          "(a fraction of the image side, e.g. 0.125)")
    if r.occlusion_stride is not None and not 0.0 < r.occlusion_stride <= 1.0:
        raise ConfigError(f"report.occlusion_stride: invalid value {r.occlusion_stride!r}; expected 0 < x <= 1 "
                          "(a fraction of the image side) or null for half the patch")
    if r.compare is not None and r.compare == r.cam:
        raise ConfigError(f"report.compare: {r.compare!r} is report.cam already; choose another method "
                          "(occlusion beside a gradient method is the useful check) or null")
    if cfg.evaluate.folds < 2:
        raise ConfigError(f"evaluate.folds: invalid value {cfg.evaluate.folds}; expected >= 2")
    parse_threshold_rule(cfg.evaluate.threshold)
    if "flip" in cfg.predict.tta and not cfg.augment.hflip:
        raise ConfigError(f"predict.tta: {cfg.predict.tta} flips films left-right, but augment.hflip is false "
                          "(the model never saw flipped films; chest films are not left-right symmetric); "
                          "use shift, or set augment.hflip: true for a task where sides do not matter")
    if cfg.model.backbone.startswith("hub:"):
        for i, st in enumerate(cfg.train.stages):
            if isinstance(st.unfreeze, int):
                raise ConfigError(
                    f"train.stages[{i}].unfreeze: {st.unfreeze} blocks is not possible with a TF Hub "
                    "backbone (it has no block structure); use head or all"
                )


def parse_threshold_rule(rule: str) -> tuple[str, float | None]:
    """Validate ``evaluate.threshold`` (see :func:`medtl.stats.thresholds.parse_threshold_rule`).

    Raises:
        ConfigError: the rule is not one of the allowed forms.
    """
    try:
        return _parse_threshold_rule(rule)
    except ValueError as exc:
        raise ConfigError(f"evaluate.threshold: {exc}") from None


def _apply_override(raw: dict, override: str) -> None:
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {override!r}: expected KEY=VALUE, e.g. --set train.batch_size=8")
    value = yaml.safe_load(text) if text else ""
    parts = key.strip().split(".")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            try:
                node = node[int(part)]
            except (ValueError, IndexError):
                raise ConfigError(f"--set {key}: no list item '{part}'") from None
            continue
        if part not in node or node[part] is None:
            if part == "stages" and parts[0] == "train" and i == 1:
                node[part] = [dataclasses.asdict(s) for s in _default_stages()]
            else:
                node[part] = {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        try:
            node[int(last)] = value
        except (ValueError, IndexError):
            raise ConfigError(f"--set {key}: no list item '{last}'") from None
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"--set {key}: '{'.'.join(parts[:-1])}' is not a mapping")


def config_from_dict(raw: dict, base_dir: str | Path | None = None, overrides: typing.Iterable[str] = ()) -> Config:
    """Build and validate a Config from a plain dict.

    Args:
        raw: the parsed YAML mapping.
        base_dir: folder that relative ``data.manifest``/``data.root`` paths are resolved against.
        overrides: ``key.sub=value`` strings applied before validation.

    Returns:
        The validated Config.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"config: expected a mapping at the top level, got {type(raw).__name__}")
    raw = yaml.safe_load(yaml.safe_dump(raw))  # deep copy, plain types only
    for ov in overrides:
        _apply_override(raw, ov)
    loss = ((raw.get("train") or {}).get("loss") if isinstance(raw.get("train"), dict) else None)
    loss_named = isinstance(loss, dict) and "name" in loss
    cfg = _build(Config, raw, "")
    if not loss_named and cfg.task == "multiclass":
        cfg.train.loss.name = "cce"  # the default loss follows the task: softmax for one class of many
    if not cfg.data.manifest:
        raise ConfigError("data.manifest: missing; give a labels CSV or a folder with one sub-folder per class")
    if base_dir is not None:
        base = Path(base_dir)
        cfg.data.manifest = str(_resolve(base, cfg.data.manifest))
        if cfg.data.root is not None:
            cfg.data.root = str(_resolve(base, cfg.data.root))
        if cfg.data.annotations:
            cfg.data.annotations = str(_resolve(base, cfg.data.annotations))
            if not Path(cfg.data.annotations).is_file():
                raise ConfigError(f"data.annotations: {cfg.data.annotations} not found; give a CSV of boxes or masks "
                                  "(relative to the config's folder) or remove the key")
        if cfg.model.weights not in ("imagenet", "none") and "://" not in cfg.model.weights:
            cfg.model.weights = str(_resolve(base, cfg.model.weights))
        handle = cfg.model.backbone[len("hub:"):] if cfg.model.backbone.startswith("hub:") else ""
        if handle and "://" not in handle and handle.startswith((".", "~", "/")):
            cfg.model.backbone = "hub:" + str(_resolve(base, handle))
    _validate(cfg)
    return cfg


def _resolve(base: Path, p: str) -> Path:
    path = Path(p).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def load_config(path: str | Path, overrides: typing.Iterable[str] = ()) -> Config:
    """Load, override and validate a YAML run config.

    Args:
        path: the YAML file.
        overrides: ``key.sub=value`` strings, as given to ``--set``.

    Returns:
        The validated Config.

    Raises:
        ConfigError: the file is missing, is not valid YAML, or has a bad key or value.

    Example:
        >>> cfg = load_config("configs/demo.yaml", ["train.stages.0.epochs=1"])
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found; pass the path of a YAML file (see configs/)")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{p}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    try:
        return config_from_dict(raw or {}, base_dir=p.parent, overrides=overrides)
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from None


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (what a run folder keeps)."""
    Path(path).write_text(cfg.to_yaml())


def load_resolved(path: str | Path) -> Config:
    """Load a config written by :func:`save_config` (paths are already absolute)."""
    raw = yaml.safe_load(Path(path).read_text())
    return config_from_dict(raw)
