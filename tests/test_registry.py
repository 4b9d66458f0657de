"""medtl.registry: the one list of heat-map methods, and the parts that read it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from medtl import registry
from medtl.registry import (
    ACTIVATION,
    GRADIENT,
    PERTURBATION,
    fallback_method,
    is_gradient,
    is_perturbation,
    map_methods,
    method_info,
    method_kind,
    method_label,
    takes_target_layer,
)


def test_names_kinds_and_labels() -> None:
    assert map_methods() == ("gradcam", "gradcam++", "hirescam", "layercam", "intgrad", "scorecam",
                             "occlusion")
    assert map_methods(GRADIENT) == ("gradcam", "gradcam++", "hirescam", "layercam", "intgrad")
    assert map_methods(ACTIVATION) == ("scorecam",)
    assert map_methods(PERTURBATION) == ("occlusion",)
    assert [method_label(m) for m in map_methods()] == [
        "Grad-CAM", "Grad-CAM++", "HiResCAM", "LayerCAM", "Integrated gradients", "Score-CAM", "Occlusion"]
    assert method_kind("hirescam") == GRADIENT and is_gradient("gradcam++")
    assert is_perturbation("occlusion") and not is_perturbation("gradcam")
    # Score-CAM reads a layer but no gradient: neither question is true, so callers that pass
    # target_layer to every non-perturbation method and patch/stride only to perturbation ones
    # (explain/files.py, report/gallery.py) give it the right arguments.
    assert not is_gradient("scorecam") and not is_perturbation("scorecam")
    assert [m for m in map_methods() if not takes_target_layer(m)] == ["intgrad", "occlusion"]
    assert fallback_method() == "occlusion"
    for name in map_methods():
        info = method_info(name)
        assert info.name == name and info.description and "\n" not in info.description


def test_unknown_method_and_kind_name_the_choices() -> None:
    with pytest.raises(ValueError, match=r"'lime': unknown; choose one of gradcam, gradcam\+\+, hirescam, "
                                         r"layercam, intgrad, scorecam, occlusion"):
        is_perturbation("lime")
    with pytest.raises(ValueError, match="unknown"):
        method_kind(["gradcam"])  # type: ignore[arg-type]  # an unhashable value from YAML
    with pytest.raises(ValueError, match="kind='saliency'"):
        map_methods("saliency")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown"):
        takes_target_layer("lime")


def test_config_and_cli_take_their_choices_from_the_registry() -> None:
    from medtl.cli import build_parser
    from medtl.config import CAM_METHODS, config_from_dict

    assert CAM_METHODS == map_methods()
    for name in map_methods():
        other = next(m for m in map_methods() if m != name)
        cfg = config_from_dict({"data": {"manifest": "a"}, "report": {"cam": name, "compare": other}})
        assert (cfg.report.cam, cfg.report.compare) == (name, other)
    assert config_from_dict({"data": {"manifest": "a"}}).report.cam == registry.DEFAULT_METHOD
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    for command, flag in (("explain", "method"), ("report", "compare")):
        action = next(a for a in sub[command]._actions if a.dest == flag)
        assert tuple(action.choices) == map_methods()


def test_registry_and_config_load_no_tensorflow() -> None:
    # A fresh interpreter: this test process may have imported TensorFlow already.
    code = ("import sys, medtl.registry, medtl.config; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras', 'tensorflow_hub'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
