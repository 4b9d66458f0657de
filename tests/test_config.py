"""Tests for medtl.config: parsing, defaults, overrides and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medtl.config import (
    Config,
    ConfigError,
    config_from_dict,
    load_config,
    load_resolved,
    parse_threshold_rule,
    save_config,
)
from medtl.registry import map_methods

ISSUE_EXAMPLE = """
name: pneumonia-resnet50
seed: 42
task: binary
data:
  manifest: labels.csv
  root: .
  path_column: file
  label_column: label
  patient_column: person_id
  classes: [normal, pneumonia]
  image_size: [224, 224]
  keep_aspect: true
  window: auto
  cache_dir: .medtl-cache
  on_error: fail
augment:
  preset: chest_xray
model:
  backbone: resnet50
  weights: imagenet
  dropout: 0.2
train:
  batch_size: 16
  loss: {name: bce, class_weight: balanced}
  stages:
    - {unfreeze: head, epochs: 5, lr: 1.0e-3}
    - {unfreeze: 2, epochs: 5, lr: 1.0e-4}
    - {unfreeze: all, epochs: 5, lr: 1.0e-5}
evaluate:
  folds: 5
  threshold: youden
report:
  cam: gradcam++
"""


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return p


def test_issue_example_parses_with_values(tmp_path):
    cfg = load_config(_write(tmp_path, ISSUE_EXAMPLE))
    assert isinstance(cfg, Config)
    assert cfg.name == "pneumonia-resnet50"
    assert cfg.data.patient_column == "person_id"
    assert cfg.data.image_size == [224, 224]
    assert [s.unfreeze for s in cfg.train.stages] == ["head", 2, "all"]
    assert [s.lr for s in cfg.train.stages] == [1e-3, 1e-4, 1e-5]
    assert cfg.report.cam == "gradcam++"
    # relative data paths are resolved against the config's folder
    assert Path(cfg.data.manifest) == (tmp_path / "labels.csv").resolve()
    assert Path(cfg.data.root) == tmp_path.resolve()


def test_defaults_are_filled():
    cfg = config_from_dict({"data": {"manifest": "/x/labels.csv"}})
    assert cfg.seed == 42 and cfg.task == "binary"
    assert cfg.data.window == "auto" and cfg.data.keep_aspect is True
    assert len(cfg.train.stages) == 3 and cfg.train.stages[0].unfreeze == "head"
    assert cfg.evaluate.folds == 5


def test_yaml_lax_float_is_coerced():
    # PyYAML reads 1e-4 (without a dot) as a string
    raw = yaml.safe_load("data: {manifest: a.csv}\ntrain: {stages: [{unfreeze: head, epochs: 1, lr: 1e-4}]}")
    assert raw["train"]["stages"][0]["lr"] == "1e-4"
    assert config_from_dict(raw).train.stages[0].lr == pytest.approx(1e-4)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ({"data": {"manifest": "a", "windw": "auto"}}, "unknown config key 'data.windw'; did you mean 'window'?"),
        ({"data": {"manifest": "a", "window": "soft"}}, "data.window: invalid value 'soft'; expected auto | minmax | percentile"),
        ({"data": {"manifest": "a"}, "train": {"batch_size": "big"}}, "train.batch_size: invalid value 'big'"),
        ({"data": {"manifest": "a"}, "train": {"stages": [{"unfreeze": 0}]}}, "train.stages[0].unfreeze: invalid value 0"),
        ({"data": {"manifest": "a"}, "train": {"stages": [{"unfreeze": "top"}]}}, "train.stages[0].unfreeze: invalid value 'top'"),
        ({"data": {"manifest": "a"}, "evaluate": {"threshold": "sens:0.9"}}, "evaluate.threshold: threshold rule 'sens:0.9' is not recognised"),
        ({"data": {"manifest": "a"}, "task": "regression"}, "task: invalid value 'regression'; expected binary | multiclass | multilabel"),
        ({"data": {"manifest": "a"}, "model": {"backbone": "hub:/m"}, "train": {"stages": [{"unfreeze": 2}]}}, "not possible with a TF Hub backbone"),
        ({"data": {"manifest": "a", "image_size": [224]}}, "data.image_size"),
        ({"data": {"manifest": "a"}, "task": "multilabel"}, "expected a list of label columns"),
        ({"data": {"manifest": "a"}, "train": {"loss": {"name": "cce"}}}, "cce needs task multiclass"),
        ({}, "data.manifest: missing"),
        ({"bogus": 1, "data": {"manifest": "a"}}, "unknown config key 'bogus'"),
        ({"data": {"manifest": "a"}, "report": {"occlusion_patch": 16}}, "report.occlusion_patch: invalid value 16"),
        ({"data": {"manifest": "a"}, "report": {"occlusion_stride": 0}}, "report.occlusion_stride: invalid value 0"),
        ({"data": {"manifest": "a"}, "report": {"compare": "lime"}}, "report.compare: invalid value 'lime'; expected " + " | ".join(map_methods()) + " or null"),
        ({"data": {"manifest": "a"}, "report": {"compare": "gradcam"}}, "report.compare: 'gradcam' is report.cam already"),
    ],
)
def test_bad_values_give_one_line_error_naming_key(raw, expected):
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw)
    msg = str(err.value)
    assert expected in msg
    assert "\n" not in msg


def test_overrides_set_nested_keys_and_list_items():
    cfg = config_from_dict(
        {"data": {"manifest": "a"}},
        overrides=["train.batch_size=4", "train.stages.1.lr=3e-5", "data.image_size=[64, 96]", "data.patient_column=none"],
    )
    assert cfg.train.batch_size == 4
    assert cfg.train.stages[1].lr == pytest.approx(3e-5)
    assert cfg.data.image_size == [64, 96]
    assert cfg.data.patient_column is None


def test_bad_override_is_reported():
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        config_from_dict({"data": {"manifest": "a"}}, overrides=["train.batch_size"])
    with pytest.raises(ConfigError, match="no list item '7'"):
        config_from_dict({"data": {"manifest": "a"}}, overrides=["train.stages.7.lr=1"])


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = _write(tmp_path, "data: [unclosed\n")
    with pytest.raises(ConfigError, match=r"run\.yaml line \d+: not valid YAML"):
        load_config(bad)
    wrong = _write(tmp_path, "data: {manifest: a.csv, windw: auto}\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: unknown config key 'data.windw'"):
        load_config(wrong)


def test_save_and_reload_round_trip(tmp_path):
    cfg = load_config(_write(tmp_path, ISSUE_EXAMPLE), overrides=["train.loss.class_weight={normal: 1, pneumonia: 3}"])
    assert cfg.train.loss.class_weight == {"normal": 1.0, "pneumonia": 3.0}
    save_config(cfg, tmp_path / "resolved.yaml")
    again = load_resolved(tmp_path / "resolved.yaml")
    assert again == cfg


@pytest.mark.parametrize(
    "rule, parsed",
    [("youden", ("youden", None)), ("sensitivity:0.9", ("sensitivity", 0.9)), ("fixed:0.5", ("fixed", 0.5))],
)
def test_threshold_rules(rule, parsed):
    assert parse_threshold_rule(rule) == parsed


@pytest.mark.parametrize("rule", ["youden:1", "fixed:abc", "specificity:", "f1", "sensitivity:abc"])
def test_threshold_rules_rejected(rule):
    with pytest.raises(ConfigError, match="evaluate.threshold"):
        parse_threshold_rule(rule)


def test_weight_file_and_local_hub_paths_resolve_against_config_folder(tmp_path):
    p = _write(tmp_path, "data: {manifest: a.csv}\nmodel: {backbone: 'hub:./hubmodel', weights: w/my.weights.h5}\n"
               "train: {stages: [{unfreeze: head}]}\n")
    cfg = load_config(p)
    assert cfg.model.weights == str((tmp_path / "w" / "my.weights.h5").resolve())
    assert cfg.model.backbone == "hub:" + str((tmp_path / "hubmodel").resolve())
    remote = config_from_dict({"data": {"manifest": "a"}, "model": {"backbone": "hub:https://tfhub.dev/x/1"}, "train": {"stages": [{"unfreeze": "all"}]}}, base_dir=tmp_path)
    assert remote.model.backbone == "hub:https://tfhub.dev/x/1" and remote.model.weights == "imagenet"


def test_default_loss_follows_the_task_but_a_named_loss_is_kept():
    assert config_from_dict({"data": {"manifest": "a"}}).train.loss.name == "bce"
    assert config_from_dict({"data": {"manifest": "a", "label_column": ["x", "y"]},
                             "task": "multilabel"}).train.loss.name == "bce"
    multi = config_from_dict({"data": {"manifest": "a"}, "task": "multiclass",
                              "train": {"loss": {"class_weight": "none"}}})
    assert multi.train.loss.name == "cce" and multi.train.loss.class_weight == "none"
    focal = config_from_dict({"data": {"manifest": "a"}, "task": "multiclass", "train": {"loss": {"name": "focal"}}})
    assert focal.train.loss.name == "focal"
    with pytest.raises(ConfigError, match="bce is for binary/multilabel"):
        config_from_dict({"data": {"manifest": "a"}, "task": "multiclass", "train": {"loss": {"name": "bce"}}})
