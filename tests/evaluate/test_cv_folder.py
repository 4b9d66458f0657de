"""Tests of the CV run folder's name (medtl/evaluate/cv_folder.py).

The fold assignment, split files and leakage guard are tested through ``run_cv`` in test_cv.py.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from medtl.config import config_from_dict
from medtl.evaluate.cv_folder import config_digest


def test_run_folder_names_survive_new_config_keys():
    """A run folder is named by a digest of the config; adding a config key must not rename the
    folders of existing configs, or `medtl cv CONFIG` would start an interrupted run anew.
    Digests as of 2026-11-29; a new key with a default goes into cv_folder._ADDED_KEYS."""

    def digest(name: str, **data) -> str:
        raw = yaml.safe_load(Path(f"configs/{name}.yaml").read_text())
        # the example configs moved to chest_xray_robust on 2026-12-05 (a different computation,
        # so a different folder); the file as it was then must keep its folder
        raw["augment"]["preset"] = {"chest_xray_robust": "chest_xray"}.get(raw["augment"]["preset"],
                                                                          raw["augment"]["preset"])
        raw["data"].update(manifest="/data/labels.csv", **data)  # the manifest path is part of it
        return config_digest(config_from_dict(raw))

    assert digest("demo") == "1c071f54de"
    assert digest("pneumonia_resnet50") == "293cb854ef"
    assert digest("multilabel_chestxray", label_column="Finding Labels", label_separator="|",
                  classes=["a", "b"]) != digest("multilabel_chestxray")
