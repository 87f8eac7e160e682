"""Issue #13 items 1-2: the QA report (panels, error gallery, annotated ROC, report.md with
the pictures and the meaning of each metric), defect masks from a calibrated pixel
threshold, and the normalised score."""
import csv
import os
import re

import cv2
import numpy as np
import pytest

from grdnet_tf import calibration, keys, run_dir, scoring
from grdnet_tf.evaluation import eval_lib, plots, report


def test_decision_normalises_with_the_threshold_at_one_half():
    decision = scoring.Decision(threshold=0.4, pixel_threshold=0.3, score_min=0.1,
                                score_max=0.9)
    np.testing.assert_allclose(decision.normalize([0.4, 0.2, 0.8, 0.0, 1.5]).numpy(),
                               [0.5, 0.25, 1.0, 0.0, 1.0], atol=1e-7)
    np.testing.assert_array_equal(decision.mask([[0.29, 0.3, 0.31]]).numpy(), [[0, 0, 1]])


def test_decision_from_calibration_and_overrides():
    cal = {"threshold": 0.2, "pixel_threshold": 0.35,
           "normalization": {"min": 0.05, "max": 0.65}}
    assert scoring.Decision.from_run(cal) == scoring.Decision(0.2, 0.35, 0.05, 0.65)
    assert scoring.Decision.from_run(cal, threshold=0.3, pixel_threshold=0.1) == \
        scoring.Decision(0.3, 0.1, 0.05, 0.65)
    # Calibrated before pixel thresholds: the segmentator's 0.5 and a [0, 1] span.
    assert scoring.Decision.from_run({"threshold": 0.2}) == scoring.Decision(0.2, 0.5, 0.0, 1.0)
    with pytest.raises(ValueError, match="no image threshold"):
        scoring.Decision.from_run(None)


def test_pixel_threshold_is_the_f1_max_on_synthetic_anomalies():
    """Clean maps at 0.1, synthetic defects at 0.6 inside their masks: any threshold in
    [0.1, 0.6) separates them; the kernel-1 F1-max lands between."""
    clean = np.full((2, 8, 8), 0.1, np.float32)
    masks = np.zeros((2, 8, 8), np.uint8)
    masks[:, 2:5, 2:5] = 1
    synthetic = np.where(masks > 0, 0.6, 0.1).astype(np.float32)
    cal_set = calibration.CalibrationSet(clean, synthetic, np.ones(2, np.int64), masks)
    threshold, f1 = calibration.pixel_threshold(cal_set, kernel=1)
    assert f1 == pytest.approx(1.0)
    assert 0.1 <= threshold < 0.6
    no_anomaly = calibration.CalibrationSet(clean, synthetic[:0], np.zeros(0, np.int64),
                                            masks[:0])
    assert calibration.pixel_threshold(no_anomaly, 1) == (scoring.DEFAULT_PIXEL_THRESHOLD,
                                                          None)


def test_trained_run_calibrates_pixel_threshold_and_span(tiny_run):
    cal = run_dir.read_calibration(tiny_run)
    assert cal["pixel_threshold_source"] == "validation_f1"
    assert 0.0 < cal["pixel_threshold"] < 1.0 and 0.0 < cal["pixel_f1_validation"] <= 1.0
    span = cal["normalization"]
    assert span["min"] <= min(cal["scores"]) and span["max"] >= max(cal["scores"])
    # tiny_run has one validation normal, its score the threshold; with the image baseline
    # it is also the lowest score of the calibration set.
    assert span["min"] <= cal["threshold"] < span["max"]


def test_errors_order_the_most_confident_first():
    fp, fn = report.errors([0, 0, 1, 1, 0, 1], [0.9, 0.1, 0.2, 0.8, 0.7, 0.05], 0.5)
    assert fp.tolist() == [0, 4] and fn.tolist() == [5, 2]


def test_threshold_scaled_puts_the_pixel_threshold_in_the_middle():
    np.testing.assert_allclose(report.threshold_scaled([0.0, 0.2, 0.1, 0.6, 1.0], 0.2),
                               [0.0, 0.5, 0.25, 0.75, 1.0], atol=1e-6)


def test_panel_png_and_title(tmp_path):
    image = np.full((20, 30, 3), 100, np.uint8)
    amap = np.zeros((20, 30), np.float32)
    amap[5:10, 5:10] = 0.9
    gt = np.zeros((20, 30), np.uint8)
    gt[4:11, 4:11] = 1
    path = str(tmp_path / "p.png")
    title = plots.verdict_title("cut_000", 0.61, 0.4, truth="cut")
    assert title == "cut_000: score 0.6100 > 0.4000 -> ANOMALOUS (truth: cut)"
    assert plots.verdict_title("good_1", 0.3, 0.4) == "good_1: score 0.3000 <= 0.4000 -> normal"
    plots.panel_png(path, image, image, amap, amap > 0.5, 0.5, title, gt_mask=gt)
    assert cv2.imread(path) is not None
    mask_rgb = plots.mask_overlay(image, amap > 0.5, gt)
    assert tuple(mask_rgb[7, 7]) == (170, 55, 55)     # 0.55 * 100 + 0.45 * (255, 0, 0)
    assert tuple(mask_rgb[4, 4]) == plots.GT_CONTOUR_RGB


def test_gallery_png_rows_and_empty_rows(tmp_path):
    thumb = np.zeros((10, 10, 3), np.uint8)
    path = str(tmp_path / "g.png")
    plots.gallery_png(path, [("good\nfalse positives (0)", []),
                             ("cut\nfalse negatives (2)", [(thumb, "a"), (thumb, "b")])])
    assert cv2.imread(path) is not None
    with pytest.raises(ValueError, match="at least one row"):
        plots.gallery_png(path, [])


def test_predict_writes_defect_masks_and_normalised_scores(tiny_run, demo_category, tmp_path):
    folder = os.path.join(demo_category, "test", "spot")
    eval_lib.predict(tiny_run, folder, str(tmp_path), batch_size=3)
    run = run_dir.load_for_inference(tiny_run)
    decision = scoring.Decision.from_run(run.calibration)
    params = scoring.ScoringParams.from_run(run.config, run.calibration)
    with open(tmp_path / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    masks = sorted(os.listdir(tmp_path / "masks"))
    assert len(masks) == len(rows) == len(os.listdir(tmp_path / "heatmaps"))
    from grdnet_tf.data import io
    image = io.read_image(rows[0]["path"], None, 3)
    served = scoring.score_images(run.model, image[None], params, decision)
    assert float(rows[0]["normalized_score"]) == pytest.approx(
        float(served[keys.NORMALIZED_SCORE][0]), abs=1e-5)
    name = os.path.relpath(rows[0]["heatmap"], "heatmaps")  # masks/ has heatmaps/' names
    written = cv2.imread(str(tmp_path / "masks" / name), cv2.IMREAD_GRAYSCALE)
    want = served[keys.ANOMALY_MASK][0].numpy() * 255
    assert written.shape == want.shape and set(np.unique(written)) <= {0, 255}
    # equal except pixels within float error of the pixel threshold
    amap = served[keys.ANOMALY_MAP][0].numpy()
    clear = np.abs(amap - decision.pixel_threshold) > 1e-5
    np.testing.assert_array_equal(written[clear], want[clear])
    assert re.fullmatch(r"\d\.\d{6}", rows[0]["normalized_score"])
