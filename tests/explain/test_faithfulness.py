"""Deletion/insertion faithfulness: the TF-free curve arithmetic and the driver on a known model."""

from __future__ import annotations

import numpy as np
import pytest

from medtl.stats.faithfulness import curve_auc, mean_interval, salience_ranks, step_masks


def test_ranks_break_ties_at_random_and_masks_grow() -> None:
    heat = np.zeros((4, 4))
    heat[0, 0], heat[3, 3] = 2.0, 1.0
    a, b = salience_ranks(heat, seed=0), salience_ranks(heat, seed=1)
    assert a[0, 0] == b[0, 0] == 0 and a[3, 3] == b[3, 3] == 1
    assert sorted(a.ravel()) == list(range(16))
    assert not np.array_equal(a, b)  # the 14 tied zeros are ordered differently
    masks = step_masks(a, np.linspace(0, 1, 5))
    assert masks.sum(axis=(1, 2)).tolist() == [0, 4, 8, 12, 16]
    assert all((masks[i] <= masks[i + 1]).all() for i in range(4))  # nested


def test_auc_and_interval() -> None:
    assert curve_auc([0.0, 1.0]) == pytest.approx(0.5)
    np.testing.assert_allclose(curve_auc([[1, 1, 0], [1, 0, 0]], [0.0, 0.5, 1.0]), [0.75, 0.25])
    with pytest.raises(ValueError, match="one fraction per step"):
        curve_auc([1.0, 0.0], [0.0, 0.5, 1.0])
    iv = mean_interval(np.arange(10.0), n_boot=300, seed=1)
    assert iv.point == 4.5 and iv.low < 4.5 < iv.high
    # Grouped: two patients with five identical films each -> only two distinct means.
    g = mean_interval([0.0] * 5 + [1.0] * 5, groups=[1] * 5 + [2] * 5, n_boot=300)
    assert g.low == 0.0 and g.high == 1.0
    with pytest.raises(ValueError, match="non-empty"):
        mean_interval([])


def test_driver_ranks_the_known_evidence_above_random() -> None:
    from medtl.explain.faithfulness import faithfulness, faithfulness_table
    from tests.explain.test_cam import _quadrant_images, _quadrant_model

    model, x = _quadrant_model(), _quadrant_images(6, seed=7)
    res = faithfulness(model, x, ["gradcam", "occlusion"], steps=8, seed=0, n_boot=200)
    assert res["n_films"] == 6 and len(res["fractions"]) == 9
    for name in ("gradcam", "occlusion"):
        e = res["methods"][name]
        # The bright square is the evidence: blurring it first drops the score sooner.
        assert e["deletion_vs_random"]["point"] < 0.0, (name, e["deletion"], res["random"]["deletion"])
        assert e["deletion_curve"][0] == pytest.approx(e["insertion_curve"][-1])  # the film itself
        assert e["verdict"] in ("more faithful than a random map",
                                "better than a random map on one curve only"), (name, e)
    assert res["methods"]["gradcam"]["grid"] == [32, 32]
    rows = faithfulness_table(res)
    assert [r["method"] for r in rows][-1] == "Random map (pixels)" and rows[0]["grid"]
    with pytest.raises(ValueError, match="unknown"):
        faithfulness(model, x, ["lime"])


def test_each_method_is_compared_with_random_maps_on_its_own_grid() -> None:
    """A coarse map is judged against random maps of its own grain, not against scattered
    pixels; a method at the input resolution against the pixel-wise random map."""
    from medtl.explain.faithfulness import faithfulness, faithfulness_table, pool_faithfulness
    from tests.explain.test_cam import _quadrant_images, _quadrant_model

    model, x = _quadrant_model(), _quadrant_images(4, seed=3)
    res = faithfulness(model, x, ["gradcam", "occlusion"], steps=4, seed=0, n_boot=50)
    occ, cam = res["methods"]["occlusion"], res["methods"]["gradcam"]
    key = "x".join(map(str, occ["grid"]))
    assert occ["random_grid"] == key and key != "32x32"
    assert cam["random_grid"] == "32x32" and res["random_by_grid"]["32x32"] is res["random"]
    coarse = res["random_by_grid"][key]
    assert coarse["per_film"] != res["random"]["per_film"]
    for curve in ("deletion", "insertion"):
        diff = np.subtract(occ["per_film"][curve], coarse["per_film"][curve]).mean()
        assert occ[f"{curve}_vs_random"]["point"] == pytest.approx(diff)
        plain = np.subtract(cam["per_film"][curve], res["random"]["per_film"][curve]).mean()
        assert cam[f"{curve}_vs_random"]["point"] == pytest.approx(plain)
    pooled = pool_faithfulness([res, res], n_boot=50)
    assert pooled["methods"]["occlusion"]["deletion_vs_random"]["point"] == pytest.approx(
        occ["deletion_vs_random"]["point"])
    labels = [r["method"] for r in faithfulness_table(res)]
    assert labels[-2:] == [f"Random map on a {key} grid", "Random map (pixels)"]
    # A result saved before the per-grid baselines pools against the pixel-wise random map.
    old = {k: v for k, v in res.items() if k != "random_by_grid"}
    old["methods"] = {k: {k2: v2 for k2, v2 in e.items() if k2 != "random_grid"} for k, e in res["methods"].items()}
    again = pool_faithfulness([old], n_boot=50)["methods"]["occlusion"]["deletion_vs_random"]["point"]
    assert again == pytest.approx(np.subtract(occ["per_film"]["deletion"], res["random"]["per_film"]["deletion"]).mean())
