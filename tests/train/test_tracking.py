"""train.log_to: mlflow logs params, per-epoch metrics and artefacts to a local MLflow store."""

from __future__ import annotations

import pytest

from medtl.config import ConfigError, config_from_dict
from tests.train.conftest import tiny_raw

mlflow = pytest.importorskip("mlflow", reason="experiment tracking needs the mlflow extra: pip install 'medtl[mlflow]'")


def _cfg(tiny_data, work, uri):
    raw = tiny_raw(tiny_data, work, model={"backbone": "smallcnn", "weights": "none", "dropout": 0.0})
    raw["train"].update(stages=[{"unfreeze": "all", "epochs": 2, "lr": 1e-2}], log_to="mlflow", mlflow_uri=uri)
    return config_from_dict(raw)


def test_train_logs_params_epochs_and_artefacts(tiny_data, tmp_path):
    from mlflow.tracking import MlflowClient

    from medtl.train.trainer import train

    uri = (tmp_path / "mlruns").as_uri()
    res = train(_cfg(tiny_data, tmp_path, uri), progress=False)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("tiny")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.log_to"] == "mlflow" and run.data.params["model.backbone"] == "smallcnn"
    assert run.data.tags["medtl.run_dir"] == str(res.run_dir.resolve())
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")]
    assert steps == [1, 2]
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "model_info.json", "history.csv", "config.yaml"} <= arts
    assert (res.run_dir / "tensorboard").is_dir()  # TensorBoard stays


def test_cv_folds_nest_under_parent_run(tiny_data, tmp_path):
    from mlflow.tracking import MlflowClient

    from medtl.train.tracking import MlflowTracker, finish_cv_tracking, start_cv_tracking

    uri = (tmp_path / "mlruns").as_uri()
    cfg = _cfg(tiny_data, tmp_path, uri)
    cv_dir = tmp_path / "cv-run"
    (cv_dir / "fold_0").mkdir(parents=True)
    parent = start_cv_tracking(cfg, cv_dir)
    fold = MlflowTracker(cfg, cv_dir / "fold_0")
    fold.start()
    fold.log_epoch({"stage": 1, "epoch": 1, "global_epoch": 1, "loss": 0.5, "best": True})
    fold.finish()
    again = MlflowTracker(cfg, cv_dir / "fold_0")  # a resumed fold reopens its run
    again.start()
    assert again.run_id == fold.client.search_runs([fold.client.get_run(parent).info.experiment_id],
                                                   "tags.mlflow.parentRunId = '%s'" % parent)[0].info.run_id
    again.finish()
    finish_cv_tracking(cfg, cv_dir, {"roc_auc": 0.75})
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(parent).data.metrics["pooled_roc_auc"] == 0.75
    assert client.get_run(parent).info.status == "FINISHED"


def test_log_to_is_validated(tiny_data, tmp_path):
    raw = tiny_raw(tiny_data, tmp_path)
    raw["train"]["log_to"] = "wandb"
    with pytest.raises(ConfigError, match="train.log_to: invalid value 'wandb'"):
        config_from_dict(raw)
