"""Does a config match the run folder it continues? One comparison for training runs (``train
--resume``) and cross-validation runs (``medtl cv`` again, or one fold job of many).

A run folder's ``config.yaml`` is the run's truth: a later call may change only keys that say
where things are or how they are shown (the free keys), never what is computed.

Example:
    >>> check_same_config("runs/x/config.yaml", saved, cfg, training_key_is_free,
    ...                   "the config differs from the run being resumed in", "{key} ({old!r} -> {new!r})",
    ...                   "resume with the same config, or start a new run")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from medtl.config import Config, ConfigError

__all__ = ["flatten", "config_differences", "check_same_config", "TRAINING_FREE_KEYS", "CV_FREE_KEYS",
           "CV_FREE_PREFIXES", "training_key_is_free", "cv_key_is_free"]

# Keys a resumed training run may change without changing what is computed.
# data.annotations is read only by the report and medtl localise.
TRAINING_FREE_KEYS = frozenset({"output_dir", "data.cache_dir", "data.workers", "data.annotations", "train.log_to",
                                "train.mlflow_uri"})
# Keys that change where things are or how they are shown, not what a CV fold computes (the
# run's name too: a CV run folder is named by a digest of the other keys).
CV_FREE_KEYS = frozenset({"output_dir", "name", "data.cache_dir", "data.workers", "data.annotations",
                          "train.log_to", "train.mlflow_uri"})
CV_FREE_PREFIXES = ("report.",)


def training_key_is_free(key: str) -> bool:
    """True for a flattened config key a resumed training run may change."""
    return key in TRAINING_FREE_KEYS


def cv_key_is_free(key: str) -> bool:
    """True for a flattened config key that may differ between calls on one CV run."""
    return key in CV_FREE_KEYS or key.startswith(CV_FREE_PREFIXES)


def flatten(d: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists are values, not flattened)."""
    out: dict = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(old: Config, new: Config, is_free: Callable[[str], bool]) -> list[tuple[str, Any, Any]]:
    """(key, old value, new value) for each flattened key that differs and is not free, sorted."""
    a, b = flatten(old.to_dict()), flatten(new.to_dict())
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and not is_free(k)]


def check_same_config(saved_path: str | Path, old: Config, new: Config, is_free: Callable[[str], bool],
                      lead: str, show: str, advice: str) -> None:
    """Raise unless ``new`` computes what ``old`` (the run's saved config) does.

    Args:
        saved_path: the run's config.yaml (named in the error).
        old, new: the saved config and the one given now.
        is_free: which flattened keys may differ.
        lead: the error's words before the differences.
        show: format of one difference, with ``{key}``, ``{old}`` and ``{new}``.
        advice: what to do, the error's last words.

    Raises:
        ConfigError: naming the first five differing keys with both values.
    """
    diff = config_differences(old, new, is_free)
    if diff:
        shown = ", ".join(show.format(key=k, old=a, new=b) for k, a, b in diff[:5])
        raise ConfigError(f"{saved_path}: {lead} {shown}; {advice}")
