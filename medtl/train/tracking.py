"""Experiment tracking in MLflow (``train.log_to: mlflow``), beside the TensorBoard files.

TensorBoard event files are always written into the run folder (``RUN/tensorboard``); with
``train.log_to: mlflow`` (``pip install 'medtl[mlflow]'``) each training run is also an MLflow
run: the flattened config as params, every epoch's history row as metrics (step = the global
epoch, so a resumed run continues its curves), and at the end metrics.json, model_info.json,
history.csv and config.yaml as artefacts (the model file is not copied: it stays in the run
folder, named by the ``medtl.run_dir`` tag).

Where: ``train.mlflow_uri``, else the ``MLFLOW_TRACKING_URI`` environment variable, else a
local file store ``<output_dir>/mlruns`` shared by every run of the project (``mlflow ui
--backend-store-uri <output_dir>/mlruns`` shows them). The experiment is the config's
``name``. A cross-validation run is one parent run; each fold (and the retrained final model)
is a nested run under it (tag ``mlflow.parentRunId``). The ids are kept in the run folder
(``mlflow_run.json``), so a resumed run or a later fold job logs into the same runs.

MLflow is called through :class:`mlflow.tracking.MlflowClient` only (no active-run global), so
a failing run cannot leave an active run behind in the user's process.

Example:
    >>> tracker = make_tracker(cfg, run_dir)          # None unless train.log_to is mlflow
    >>> tracker.start(); tracker.log_epoch({"global_epoch": 1, "loss": 0.7}); tracker.finish()
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from medtl.config import Config, ConfigError
from medtl.io.atomic import write_json
from medtl.run.layout import CONFIG_FILE, HISTORY_FILE, METRICS_FILE, MODEL_INFO_FILE
from medtl.run.resume import flatten

__all__ = ["MlflowTracker", "make_tracker", "tracking_uri", "start_cv_tracking", "finish_cv_tracking",
           "TRACKING_FILE"]

#: The run folder's record of its MLflow run (uri, experiment and run ids).
TRACKING_FILE = "mlflow_run.json"
_ARTEFACTS = (METRICS_FILE, MODEL_INFO_FILE, HISTORY_FILE, CONFIG_FILE)
# History columns that are positions, not measurements.
_NOT_METRICS = frozenset({"stage", "epoch", "global_epoch", "best"})


def _client(uri: str):
    """An MlflowClient for ``uri``, or a ConfigError saying how to install MLflow."""
    if uri.startswith("file:") or "://" not in uri:
        # MLflow 3 refuses its file store unless told: it is the documented local store here.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    try:
        from mlflow.tracking import MlflowClient  # why: optional extra, loaded only with train.log_to: mlflow
    except ImportError:
        raise ConfigError("train.log_to: mlflow needs the mlflow package; pip install 'medtl[mlflow]', "
                          "or set train.log_to: tensorboard") from None
    return MlflowClient(tracking_uri=uri)


def tracking_uri(cfg: Config) -> str:
    """Where runs are logged: train.mlflow_uri, else $MLFLOW_TRACKING_URI, else
    ``file:<output_dir>/mlruns`` (absolute).

    Example:
        >>> tracking_uri(cfg)
        'file:///home/me/project/runs/mlruns'
    """
    if cfg.train.mlflow_uri:
        return str(cfg.train.mlflow_uri)
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return (Path(cfg.output_dir).resolve() / "mlruns").as_uri()


class MlflowTracker:
    """One medtl run folder as one MLflow run (created, or reopened from ``mlflow_run.json``).

    Args:
        cfg: the run's config (params, experiment name, where to log).
        run_dir: the run folder; a parent folder with ``mlflow_run.json`` (a CV run) makes this
            run a nested run of that one, logged to the same store.

    Example:
        >>> t = MlflowTracker(cfg, Path("runs/demo/20260101-120000"))
        >>> t.start()
    """

    def __init__(self, cfg: Config, run_dir: Path) -> None:
        self.cfg = cfg
        self.dir = Path(run_dir)
        self.parent = _read_record(self.dir.parent)
        self.uri = self.parent["tracking_uri"] if self.parent else tracking_uri(cfg)
        self.client = _client(self.uri)
        self.run_id: str | None = None

    def start(self) -> None:
        """Create the MLflow run with the config as params, or reopen the one on record."""
        record = _read_record(self.dir)
        if record and record.get("tracking_uri") == self.uri:
            self.run_id = record["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")  # a resumed run: same curves
            return
        tags = {"medtl.run_dir": str(self.dir.resolve())}
        if self.parent:
            tags["mlflow.parentRunId"] = self.parent["run_id"]
        self.run_id = _create_run(self.client, self.cfg.name, self.dir.name, tags, self.parent)
        self.client.log_batch(self.run_id, params=_params(self.cfg))
        write_json(self.dir / TRACKING_FILE, {"tracking_uri": self.uri, "run_id": self.run_id})

    def log_epoch(self, row: dict[str, Any]) -> None:
        """Log one history row's numbers at step = its global epoch (1-based)."""
        from mlflow.entities import Metric  # why: optional extra, loaded only with train.log_to: mlflow

        step, now = int(row["global_epoch"]), int(time.time() * 1000)
        metrics = [Metric(_key(k), float(v), now, step) for k, v in row.items()
                   if k not in _NOT_METRICS and _is_number(v)]
        if metrics and self.run_id:
            self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, status: str = "FINISHED") -> None:
        """Log the run folder's result files as artefacts (on success) and close the run."""
        if not self.run_id:
            return
        if status == "FINISHED":
            for name in _ARTEFACTS:
                if (self.dir / name).is_file():
                    self.client.log_artifact(self.run_id, str(self.dir / name))
        self.client.set_terminated(self.run_id, status)
        self.run_id = None


def make_tracker(cfg: Config, run_dir: Path) -> MlflowTracker | None:
    """The run's tracker: None for ``train.log_to: tensorboard`` (the default).

    Raises:
        ConfigError: ``train.log_to`` is mlflow and MLflow is not installed.

    Example:
        >>> make_tracker(cfg, run_dir) is None      # cfg.train.log_to == "tensorboard"
        True
    """
    return MlflowTracker(cfg, run_dir) if cfg.train.log_to == "mlflow" else None


def start_cv_tracking(cfg: Config, run: Path) -> str | None:
    """Create (or reopen) a CV run's parent MLflow run; its folds nest under it. None unless
    ``train.log_to`` is mlflow.

    Example:
        >>> start_cv_tracking(cfg, Path("runs/demo/cv-1a2b3c4d5e"))
        '3f2a...'
    """
    tracker = make_tracker(cfg, Path(run))
    if tracker is None:
        return None
    tracker.parent = None  # a CV run is a top-level run even inside another CV run's folder
    tracker.uri = tracking_uri(cfg)
    tracker.client = _client(tracker.uri)
    tracker.start()
    return tracker.run_id


def finish_cv_tracking(cfg: Config, run: Path, pooled: dict[str, Any]) -> None:
    """Log a CV run's pooled metrics (step 0) and metrics.json, and close its parent run.

    Example:
        >>> finish_cv_tracking(cfg, run, merge_cv(run)["pooled"])
    """
    record = _read_record(Path(run))
    if cfg.train.log_to != "mlflow" or not record:
        return
    from mlflow.entities import Metric  # why: optional extra, loaded only with train.log_to: mlflow

    client = _client(record["tracking_uri"])
    now = int(time.time() * 1000)
    client.log_batch(record["run_id"], metrics=[Metric(_key(f"pooled_{k}"), float(v), now, 0)
                                                for k, v in pooled.items() if _is_number(v)])
    for name in (METRICS_FILE, CONFIG_FILE):
        if (Path(run) / name).is_file():
            client.log_artifact(record["run_id"], str(Path(run) / name))
    client.set_terminated(record["run_id"], "FINISHED")


def _create_run(client, experiment: str, run_name: str, tags: dict[str, str], parent: dict | None) -> str:
    if parent and parent.get("experiment_id"):
        eid = parent["experiment_id"]
    else:
        found = client.get_experiment_by_name(experiment)
        eid = found.experiment_id if found is not None else client.create_experiment(experiment)
    return client.create_run(eid, tags=tags, run_name=run_name).info.run_id


def _read_record(folder: Path) -> dict | None:
    path = Path(folder) / TRACKING_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if "experiment_id" not in record and record.get("run_id"):
        try:  # the experiment a nested run belongs in: the parent's
            record["experiment_id"] = _client(record["tracking_uri"]).get_run(record["run_id"]).info.experiment_id
        except Exception:  # noqa: BLE001 - an unreachable store: the child finds its experiment by name
            pass
    return record


def _params(cfg: Config) -> list:
    from mlflow.entities import Param  # why: optional extra, loaded only with train.log_to: mlflow

    # MLflow caps a param value at 6000 characters; lists (stages) are kept as their text.
    return [Param(k, str(v)[:6000]) for k, v in sorted(flatten(cfg.to_dict()).items())]


def _key(name: str) -> str:
    """An MLflow metric name (letters, digits, _ - . / and spaces only)."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in str(name))


def _is_number(v: Any) -> bool:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return False
    return f == f and not isinstance(v, bool)
