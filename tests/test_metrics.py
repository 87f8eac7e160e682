"""Tests for grdnet_tf.evaluation.metrics: analytic values and brute-force references."""
import json
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from grdnet_tf.evaluation import metrics


# --------------------------------------------------------------------------- references
def brute_force_aupro(masks, maps, fpr_limit, thresholds=None):
    """AUPRO straight from the definition: one binary prediction per threshold."""
    structure = np.ones((3, 3), bool)
    regions, normal = [], []
    for m in masks:
        lab, k = ndimage.label(m > 0, structure=structure)
        regions.append([lab == j for j in range(1, k + 1)])
        normal.append(m == 0)
    if thresholds is None:
        thresholds = np.unique(np.concatenate([a.ravel() for a in maps]))
    points = [(0.0, 0.0)]
    for t in thresholds:
        overlaps, fp, n = [], 0, 0
        for regs, nm, a in zip(regions, normal, maps):
            pred = a >= t
            overlaps += [pred[r].mean() for r in regs]
            fp += np.sum(pred & nm)
            n += nm.sum()
        points.append((fp / n, float(np.mean(overlaps))))
    points.sort()
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        if x0 >= fpr_limit:
            break
        if x1 > fpr_limit:
            y1 = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            x1 = fpr_limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / fpr_limit


def random_case(rng, n=3, h=12, w=12, levels=None):
    masks = np.zeros((n, h, w), np.uint8)
    for i in range(n - 1):                    # last image stays good
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, h - 2), rng.integers(0, w - 2)
            masks[i, y:y + rng.integers(1, 4), x:x + rng.integers(1, 4)] = 1
    maps = rng.random((n, h, w)).astype(np.float32) * 0.7 + 0.3 * masks
    if levels:                                # quantise to create ties across classes
        maps = np.round(maps * levels) / levels
    return masks, maps.astype(np.float32)


def two_region_case():
    """Two images 1x10. Image 0: region R1 (3 px) and R2 (1 px); image 1 is good.

    Scores: R1 = 0.9, 0.6, 0.3; R2 = 0.5; normal pixels 0.7, 0.4 and 14 x 0.0.
    The PRO curve, (FPR, PRO) over 16 normal pixels:
      (0,0) (0,1/6) (1/16,1/6) (1/16,1/3) (1/16,5/6) (1/8,5/6) (1/8,1) (1,1)
    """
    masks = np.zeros((2, 1, 10), np.uint8)
    maps = np.zeros((2, 1, 10), np.float32)
    masks[0, 0, [0, 1, 2, 4]] = 1
    maps[0, 0, :5] = [0.9, 0.6, 0.3, 0.7, 0.5]
    maps[1, 0, 3] = 0.4
    return masks, maps


# --------------------------------------------------------------------------- image AUROC
def test_image_auroc_matches_sklearn_random():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.random(200) + 0.3 * y, 1)          # with ties
    assert metrics.image_auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


@pytest.mark.parametrize("scores, expected", [
    ([0.1, 0.2, 0.8, 0.9], 1.0),    # perfect
    ([0.9, 0.8, 0.2, 0.1], 0.0),    # inverted
    ([0.5, 0.5, 0.5, 0.5], 0.5),    # all tied
    ([0.1, 0.6, 0.5, 0.9], 0.75),   # one of four pairs misordered
])
def test_image_auroc_hand_cases(scores, expected):
    assert metrics.image_auroc([0, 0, 1, 1], scores) == pytest.approx(expected)


def test_image_auroc_one_class_is_none_with_warning():
    with mock.patch.object(metrics.logging, "warning") as warn:
        assert metrics.image_auroc([1, 1, 1], [0.1, 0.2, 0.3]) is None
        assert metrics.image_auroc([0, 0], [0.1, 0.2]) is None
        assert metrics.image_auroc([], []) is None
    assert warn.call_count == 3
    assert "undefined" in warn.call_args[0][0]


def test_non_finite_scores_raise():
    with pytest.raises(ValueError, match="non-finite"):
        metrics.image_auroc([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError, match="0/1"):
        metrics.image_auroc([0, 2], [0.1, 0.2])


# --------------------------------------------------------------------------- pixel AUROC
def test_pixel_auroc_matches_sklearn_on_flattened():
    masks, maps = random_case(np.random.default_rng(1), levels=10)
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert metrics.pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-12)
    # [N, H, W, 1] and per-image lists are the same data.
    assert metrics.pixel_auroc(masks[..., None], list(maps)) == pytest.approx(expected)


def test_pixel_auroc_roi_restricts_pixels():
    masks = np.array([[[1, 0], [0, 0]]])
    maps = np.array([[[0.5, 0.9], [0.1, 0.2]]])
    roi = np.array([[[1, 0], [1, 1]]])
    # All pixels: the positive (0.5) beats 2 of 3 normals; the ROI drops the 0.9 normal.
    assert metrics.pixel_auroc(masks, maps) == pytest.approx(2 / 3)
    assert metrics.pixel_auroc(masks, maps, roi=roi) == pytest.approx(1.0)
    # ROI without any anomalous pixel: undefined.
    assert metrics.pixel_auroc(masks, maps, roi=1 - masks) is None


def test_rectangular_roi_equals_crop():
    masks, maps = random_case(np.random.default_rng(2), levels=8)
    roi = np.zeros_like(masks)
    roi[:, 2:9, 1:7] = 1
    crop = (slice(None), slice(2, 9), slice(1, 7))
    assert metrics.pixel_auroc(masks, maps, roi=roi) == pytest.approx(
        metrics.pixel_auroc(masks[crop], maps[crop]), abs=1e-12)
    assert metrics.aupro(masks, maps, roi=roi) == pytest.approx(
        metrics.aupro(masks[crop], maps[crop]), abs=1e-12)


# --------------------------------------------------------------------------- AUPRO
def test_aupro_perfect_map_is_one():
    masks, _ = random_case(np.random.default_rng(3))
    assert metrics.aupro(masks, masks.astype(np.float32)) == pytest.approx(1.0)
    assert metrics.aupro(masks, masks * 0.6 + 0.2, fpr_limit=0.05) == pytest.approx(1.0)


@pytest.mark.parametrize("fpr_limit, expected", [
    (0.3, 19 / 24),       # (1/96 + 5/96 + 1 * (0.3 - 1/8)) / 0.3
    (0.1, 5 / 12),        # (1/96 + 5/6 * (0.1 - 1/16)) / 0.1
    (1 / 16, 1 / 6),      # limit exactly at a vertical step: only the 1/6 plateau
    (1.0, 0.9375),        # 1/96 + 5/96 + 7/8
])
def test_aupro_two_regions_hand_computed(fpr_limit, expected):
    masks, maps = two_region_case()
    assert metrics.aupro(masks, maps, fpr_limit=fpr_limit) == pytest.approx(expected, abs=1e-12)


def test_pro_curve_two_regions_points():
    fpr, pro, thr = metrics.pro_curve(*two_region_case())
    np.testing.assert_allclose(thr, [np.inf, 0.9, 0.7, 0.6, 0.5, 0.4, 0.3, 0.0], atol=1e-7)
    np.testing.assert_allclose(fpr, [0, 0, 1 / 16, 1 / 16, 1 / 16, 1 / 8, 1 / 8, 1])
    np.testing.assert_allclose(pro, [0, 1 / 6, 1 / 6, 1 / 3, 5 / 6, 5 / 6, 1, 1])


def test_pro_regions_are_eight_connected():
    # Diagonal pair {a, b} is one region (8-connectivity); c is a second region.
    mask = np.zeros((1, 5, 5), np.uint8)
    mask[0, 0, 0] = mask[0, 1, 1] = mask[0, 4, 4] = 1
    amap = np.zeros((1, 5, 5), np.float32)
    amap[0, 0, 0] = 1.0                       # only a is detected at threshold 1
    fpr, pro, _ = metrics.pro_curve(mask, amap)
    assert pro[1] == pytest.approx(0.25)      # (1/2 + 0) / 2; 4-connectivity gives 1/3
    assert fpr[1] == 0.0


@pytest.mark.parametrize("seed, levels, fpr_limit", [
    (10, None, 0.3), (11, 5, 0.3), (12, 20, 0.3), (13, None, 0.05), (14, 3, 1.0),
])
def test_aupro_matches_brute_force(seed, levels, fpr_limit):
    masks, maps = random_case(np.random.default_rng(seed), levels=levels)
    expected = brute_force_aupro(masks, maps, fpr_limit)
    # Both use every distinct threshold, so they agree to rounding (brief: 1e-3).
    assert metrics.aupro(masks, maps, fpr_limit=fpr_limit) == pytest.approx(expected, abs=1e-9)


def test_aupro_threshold_grid_matches_brute_force_on_same_grid():
    masks, maps = random_case(np.random.default_rng(20))
    grid = np.linspace(maps.min(), maps.max(), 25)
    expected = brute_force_aupro(masks, maps, 0.3, thresholds=grid)
    assert metrics.aupro(masks, maps, num_thresholds=25) == pytest.approx(expected, abs=1e-9)


def test_aupro_random_map_is_half_the_limit():
    # Uninformative map: PRO ~= FPR, so the normalised area is ~fpr_limit / 2.
    rng = np.random.default_rng(30)
    masks = np.zeros((4, 64, 64), np.uint8)
    masks[:3, 10:30, 10:30] = 1
    maps = rng.random(masks.shape).astype(np.float32)
    assert metrics.aupro(masks, maps, fpr_limit=0.3) == pytest.approx(0.15, abs=0.02)
    assert metrics.aupro(masks, maps, fpr_limit=1.0) == pytest.approx(0.5, abs=0.03)


def test_aupro_undefined_cases_are_none():
    good = np.zeros((2, 4, 4), np.uint8)
    assert metrics.aupro(good, np.random.rand(2, 4, 4)) is None        # no region
    assert metrics.aupro(np.ones((1, 4, 4)), np.random.rand(1, 4, 4)) is None  # no normal
    with pytest.raises(ValueError):
        metrics.aupro(good, np.random.rand(2, 4, 4), fpr_limit=0.0)


# --------------------------------------------------------------------------- F1 and rates
def brute_force_f1_max(y, s):
    best = 0.0
    for t in np.unique(s):
        pred = s >= t
        tp = np.sum(pred & (y == 1))
        best = max(best, 2 * tp / (pred.sum() + y.sum()))
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_f1_max_matches_brute_force_and_threshold_reproduces_it(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 60)
    s = np.round(rng.random(60) + 0.4 * y, 1)
    f1, thr = metrics.f1_max(y, s)
    assert f1 == pytest.approx(brute_force_f1_max(y, s), abs=1e-12)
    # The returned threshold realises the F1 under the `score > threshold` rule.
    assert metrics.detection_rates(y, s, thr)["f1"] == pytest.approx(f1, abs=1e-12)


def test_f1_max_hand_case_and_no_positives():
    f1, thr = metrics.f1_max([0, 0, 1, 1], [0.1, 0.3, 0.7, 0.9])
    assert (f1, thr) == (pytest.approx(1.0), pytest.approx(0.5))   # halfway 0.3 .. 0.7
    assert metrics.f1_max([0, 0], [0.1, 0.2]) == (None, None)


def test_false_alarm_rate_hand_case():
    labels = [0, 0, 0, 0, 1]
    scores = [0.1, 0.5, 0.5, 0.9, 0.2]
    assert metrics.false_alarm_rate(labels, scores, 0.5) == pytest.approx(0.25)  # strict >
    assert metrics.false_alarm_rate(labels, scores, 0.0) == pytest.approx(1.0)
    assert metrics.false_alarm_rate([1, 1], [0.1, 0.2], 0.5) is None


def test_detection_rates_hand_case():
    # tp=2 (0.8, 0.9), fn=1 (0.3), fp=1 (0.7), tn=2.
    r = metrics.detection_rates([0, 0, 0, 1, 1, 1], [0.1, 0.2, 0.7, 0.3, 0.8, 0.9], 0.5)
    assert r == {"tpr": pytest.approx(2 / 3), "fpr": pytest.approx(1 / 3),
                 "precision": pytest.approx(2 / 3), "recall": pytest.approx(2 / 3),
                 "accuracy": pytest.approx(4 / 6), "f1": pytest.approx(2 / 3)}
    none_predicted = metrics.detection_rates([0, 1], [0.1, 0.2], 0.9)
    assert none_predicted["precision"] is None and none_predicted["f1"] == 0.0


# --------------------------------------------------------------------------- evaluate_all
def test_evaluate_all_keys_values_and_json():
    labels = [0, 0, 0, 1, 1, 1, 1]
    scores = [0.1, 0.2, 0.3, 0.5, 0.6, 0.15, 0.05]
    defects = ["good", "good", "good", "a", "a", "b", "b"]
    masks, maps = random_case(np.random.default_rng(40), n=7)
    masks = list(masks)
    masks[6] = None                                  # no ground truth for this one
    rois = np.ones((7, 12, 12), np.uint8)
    out = metrics.evaluate_all(labels, scores, masks=masks, maps=maps, defects=defects,
                               threshold=0.25, rois=rois)
    assert set(out) == {
        "image_auroc", "pixel_auroc", "aupro", "image_f1_max", "image_f1_max_threshold",
        "pixel_f1_max", "per_defect_image_auroc", "threshold", "false_alarm_rate",
        "tpr", "fpr", "precision", "recall", "accuracy", "f1", "pixel_auroc_roi", "aupro_roi"}
    json.dumps(out)
    # a: both above every good score; b: 0.15 beats one of three goods, 0.05 none.
    assert out["per_defect_image_auroc"] == {"a": pytest.approx(1.0), "b": pytest.approx(1 / 6)}
    assert out["image_auroc"] == pytest.approx(roc_auc_score(labels, scores))
    assert out["false_alarm_rate"] == pytest.approx(1 / 3)
    kept = [m for m in masks if m is not None]
    assert out["pixel_auroc"] == pytest.approx(metrics.pixel_auroc(kept, list(maps[:6])))
    assert out["aupro"] == pytest.approx(metrics.aupro(kept, list(maps[:6])))
    assert out["pixel_auroc_roi"] == pytest.approx(out["pixel_auroc"])   # full ROI
    assert all(isinstance(v, float) for k, v in out.items() if k != "per_defect_image_auroc")


def test_evaluate_all_image_only_and_one_class():
    out = metrics.evaluate_all([1, 1], [0.3, 0.4])
    json.dumps(out)
    assert out["image_auroc"] is None and out["pixel_auroc"] is None and out["aupro"] is None
    assert out["image_f1_max"] == pytest.approx(1.0)
    assert "threshold" not in out and "aupro_roi" not in out


def test_metrics_modules_do_not_import_tensorflow():
    code = ("import sys, grdnet_tf.evaluation.metrics, grdnet_tf.evaluation.plots; "
            "assert 'tensorflow' not in sys.modules and 'matplotlib.pyplot' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
