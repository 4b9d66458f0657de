"""A run refused before it trained leaves no folder behind (issue 23, point 3)."""

from __future__ import annotations

import pytest

from medtl.run.refusal import removed_if_refused


def test_a_fresh_folder_goes_on_refusal_an_old_one_or_a_started_run_stays(tmp_path):
    fresh = tmp_path / "fresh"
    (fresh / "ckpt").mkdir(parents=True)
    with pytest.raises(ValueError, match="refused"):
        with removed_if_refused(fresh, True, fresh / "ckpt" / "state.json"):
            raise ValueError("refused")
    assert not fresh.exists()

    old = tmp_path / "old"  # a folder the user had: never removed
    old.mkdir()
    with pytest.raises(ValueError):
        with removed_if_refused(old, False, old / "ckpt" / "state.json"):
            raise ValueError("refused")
    assert old.is_dir()

    started = tmp_path / "started"  # an epoch was checkpointed: resumable, kept
    (started / "ckpt").mkdir(parents=True)
    (started / "ckpt" / "state.json").write_text("{}")
    with pytest.raises(KeyboardInterrupt):
        with removed_if_refused(started, True, started / "ckpt" / "state.json"):
            raise KeyboardInterrupt
    assert started.is_dir()

    with removed_if_refused(fresh, True, fresh / "x") as path:  # no exception: nothing removed
        path.mkdir()
    assert fresh.is_dir()


def test_a_training_run_refused_by_data_validation_leaves_no_folder(tmp_path):
    from medtl.config import config_from_dict
    from medtl.train.trainer import train

    manifest = tmp_path / "labels.csv"
    manifest.write_text("file,label,patient_id\nmissing_1.png,0,p1\nmissing_2.png,1,p2\n")
    cfg = config_from_dict({"name": "refused", "output_dir": str(tmp_path / "runs"),
                            "data": {"manifest": str(manifest), "path_column": "file", "label_column": "label",
                                     "patient_column": "patient_id", "cache_dir": str(tmp_path / "cache")},
                            "model": {"backbone": "smallcnn", "weights": "none"}})
    with pytest.raises(Exception):  # noqa: B017 - whichever refusal the data layer raises
        train(cfg, progress=False)
    runs = tmp_path / "runs" / "refused"
    assert not runs.exists() or list(runs.iterdir()) == []
