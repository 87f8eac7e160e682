"""Issue 5: grdnet-eval / grdnet-predict library functions on a real tiny run."""
import csv
import json
import os
import shutil

import cv2
import numpy as np
import pytest
import tensorflow as tf

from grdnet_tf import keys, run_dir, run_scoring, scoring
from grdnet_tf.data import io
from grdnet_tf.evaluation import eval_lib, report


@pytest.fixture(scope="module")
def evaluated(tiny_evaluation):
    """(evaluate's result, its output folder) of the session's tiny run (conftest.py)."""
    return tiny_evaluation


def test_evaluate_writes_metrics_report_plots_and_overlays(evaluated):
    result, out = evaluated
    with open(os.path.join(out, "metrics.json")) as f:
        saved = json.load(f)
    for key in ("image_auroc", "pixel_auroc", "aupro", "image_f1_max", "threshold",
                "per_defect_image_auroc", "false_alarm_rate", "pixel_auroc_roi"):
        assert key in saved, key
    assert saved["num_images"] == 12
    assert set(saved["per_defect_image_auroc"]) == {"spot", "scratch"}
    assert 0.0 <= saved["image_auroc"] <= 1.0 and 0.0 <= saved["pixel_auroc"] <= 1.0
    calibration = run_dir.read_calibration(result["model_dir"])
    assert saved["threshold"] == pytest.approx(calibration["threshold"])
    assert set(saved["folders"]) == {"good", "good_outside_roi", "spot", "scratch"}
    assert saved["folders"]["good_outside_roi"]["label"] == 0
    for name in ("report.md", "roc.png", "histogram.png", "scores.csv"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    assert cv2.imread(os.path.join(out, "roc.png")) is not None
    overlays = sorted(os.listdir(os.path.join(out, "overlays")))
    assert len(overlays) == 4
    assert sum(o.startswith("most_") for o in overlays) == 2
    assert "image_auroc" in open(os.path.join(out, "report.md")).read()
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]


def test_evaluated_scores_equal_the_scoring_module_on_native_images(evaluated, tiny_run):
    """The evaluation path scores exactly what scoring.score_images (the export) scores."""
    result, out = evaluated
    with open(os.path.join(out, "scores.csv")) as f:
        rows = list(csv.DictReader(f))
    run = run_dir.load_for_inference(tiny_run)
    config = run.config
    paths = [r["path"] for r in rows[:3]]
    images = np.stack([io.read_image(p, None, 3) for p in paths])
    expected = scoring.score_images(
        run.model, images, scoring.ScoringParams.from_run(config, run.calibration),
        run.threshold)
    np.testing.assert_allclose([float(r["score"]) for r in rows[:3]],
                               expected[keys.ANOMALY_SCORE].numpy(), atol=1e-5)
    assert expected[keys.ANOMALY_MAP].shape == images.shape[:3]


def test_predict_streams_csv_and_heatmaps(tiny_run, demo_category, tmp_path):
    folder = os.path.join(demo_category, "test", "spot")
    result = eval_lib.predict(tiny_run, folder, str(tmp_path), batch_size=3)
    with open(result["predictions_csv"]) as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == eval_lib.expand_inputs(folder)
    assert result["count"] == len(rows) == len(os.listdir(tmp_path / "heatmaps"))
    heatmap = cv2.imread(str(tmp_path / "heatmaps" / os.listdir(tmp_path / "heatmaps")[0]))
    assert heatmap.shape == (64, 64, 3)
    # A threshold below every score flags everything; above every score flags nothing.
    low = eval_lib.predict(tiny_run, os.path.join(folder, "*.png"), str(tmp_path / "low"),
                           threshold=-1.0, overlays=False)
    high = eval_lib.predict(tiny_run, rows[0]["path"], str(tmp_path / "high"), threshold=2.0,
                            overlays=False)
    assert low["flagged"] == low["count"] == len(rows)
    assert high["count"] == 1 and high["flagged"] == 0


def test_predict_with_roi_masks_maps_like_score_images(tiny_run, demo_category, tmp_path,
                                                       monkeypatch):
    """--roi as a folder of masks by stem, or one template for every image: the scores are
    score_images' with that ROI, each ROI file is read once per image (scoring and the
    heatmap outline share it); a folder lacking a mask stops before anything is written."""
    folder = os.path.join(demo_category, "test", "good_outside_roi")
    roi_dir = os.path.join(demo_category, "test_roi", "good_outside_roi")
    run = run_dir.load_for_inference(tiny_run)
    params = scoring.ScoringParams.from_run(run.config, run.calibration)
    decision = scoring.Decision.from_run(run.calibration)

    def rows(output_dir):
        with open(os.path.join(output_dir, "predictions.csv")) as f:
            return list(csv.DictReader(f))

    def served(path, roi_path):
        image = io.read_image(path, None, 3)
        roi = io.read_mask(roi_path).astype(np.float32)
        return float(scoring.score_images(run.model, image[None], params, decision,
                                          roi=roi[None])[keys.ANOMALY_SCORE][0])

    eval_lib.predict(tiny_run, folder, str(tmp_path / "plain"), overlays=False)
    reads, read_mask = [], io.read_mask

    def counted_read_mask(path, *args, **kwargs):
        reads.append(os.path.basename(path))
        return read_mask(path, *args, **kwargs)

    monkeypatch.setattr(io, "read_mask", counted_read_mask)
    eval_lib.predict(tiny_run, folder, str(tmp_path / "by_stem"), roi=roi_dir, batch_size=3)
    monkeypatch.setattr(io, "read_mask", read_mask)
    plain, by_stem = rows(tmp_path / "plain"), rows(tmp_path / "by_stem")
    assert [r["path"] for r in by_stem] == [r["path"] for r in plain]
    assert sorted(reads) == sorted(os.path.splitext(os.path.basename(r["path"]))[0] + ".png"
                                   for r in by_stem)
    for row in by_stem:
        stem = os.path.splitext(os.path.basename(row["path"]))[0]
        assert float(row["score"]) == pytest.approx(
            served(row["path"], os.path.join(roi_dir, stem + ".png")), abs=1e-5)
    assert any(abs(float(a["score"]) - float(b["score"])) > 1e-4
               for a, b in zip(plain, by_stem))
    # One template: the left half of the image only.
    template = str(tmp_path / "template.png")
    half = np.zeros((64, 64), np.uint8)
    half[:, :32] = 255
    cv2.imwrite(template, half)
    eval_lib.predict(tiny_run, folder, str(tmp_path / "template"), roi=template)
    for row in rows(tmp_path / "template"):
        picture = cv2.imread(str(tmp_path / "template" / row["heatmap"]))
        assert (picture[4:60, 31] == 255).all()       # the ROI outline, white
        assert not (picture[4:60, 40] == 255).all(axis=-1).any()
        assert float(row["score"]) == pytest.approx(served(row["path"], template), abs=1e-5)
        mask = cv2.imread(str(tmp_path / "template" / row["heatmap"].replace(
            "heatmaps", "masks", 1)), cv2.IMREAD_GRAYSCALE)
        assert mask.shape == (64, 64) and not mask[:, 32 + 8:].any()
    partial = tmp_path / "partial_rois"
    partial.mkdir()
    cv2.imwrite(str(partial / "000.png"), half)
    out = tmp_path / "partial"
    with pytest.raises(ValueError, match=r"--roi=.*partial_rois has no mask <stem>\.\* for "
                                         r"3 of 4 image\(s\), e.g. .*001.png"):
        eval_lib.predict(tiny_run, folder, str(out), roi=str(partial))
    assert not os.path.exists(out)
    with pytest.raises(FileNotFoundError, match="--roi=.*nowhere: no such mask file or folder"):
        eval_lib.predict(tiny_run, folder, str(out), roi=str(tmp_path / "nowhere"))


def test_predict_bad_inputs(tiny_run, tmp_path):
    with pytest.raises(FileNotFoundError, match="no image files"):
        eval_lib.predict(tiny_run, str(tmp_path / "nothing*.png"), str(tmp_path / "o"))
    bad = tmp_path / "imgs"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"not a png")
    cv2.imwrite(str(bad / "ok.png"), np.full((40, 50, 3), 128, np.uint8))
    with pytest.raises(io.ImageReadError, match="broken.png"):
        eval_lib.predict(tiny_run, str(bad), str(tmp_path / "o2"))
    assert not os.path.exists(tmp_path / "o2" / "predictions.csv")
    skipped = eval_lib.predict(tiny_run, str(bad), str(tmp_path / "o3"), skip_bad_files=True)
    assert skipped["count"] == 1


def test_model_dir_without_checkpoint_is_a_clear_error(tmp_path, demo_category, tiny_run):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        eval_lib.evaluate(str(tmp_path / "missing"), demo_category, str(tmp_path / "o"))
    empty = tmp_path / "empty_run"
    empty.mkdir()
    shutil.copy(os.path.join(tiny_run, "config.json"), empty / "config.json")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        eval_lib.evaluate(str(empty), demo_category, str(tmp_path / "o"))


def test_missing_ground_truth_and_one_class_test_split(tiny_run, demo_category, tmp_path):
    category = tmp_path / "cat"
    shutil.copytree(demo_category, category)
    # A defect image without ground truth: warned and left out of the pixel metrics.
    gt = category / "ground_truth" / "spot"
    os.remove(gt / sorted(os.listdir(gt))[0])
    result = eval_lib.evaluate(tiny_run, str(category), str(tmp_path / "o1"), num_overlays=1)
    assert any("without ground truth" in note for note in result["notes"])
    assert result["pixel_auroc"] is not None
    # Only good images: AUROC undefined with a message, no crash.
    for folder in ("spot", "scratch"):
        shutil.rmtree(category / "test" / folder)
        shutil.rmtree(category / "ground_truth" / folder, ignore_errors=True)
    result = eval_lib.evaluate(tiny_run, str(category), str(tmp_path / "o2"), num_overlays=1)
    assert result["image_auroc"] is None
    assert any("only one class" in note for note in result["notes"])
    assert result["false_alarm_rate"] is not None


def test_hard_roi_masking_silences_outside(tiny_run, demo_category, tmp_path):
    """With use_roi, a sample's map is zero outside its test ROI."""
    run = run_dir.load_for_inference(tiny_run)
    scorer = run_scoring.Scorer(run, use_roi=True)
    from grdnet_tf.data import mvtec
    sample = [s for s in mvtec.index_test(demo_category) if s.roi_path][0]
    scored = next(run_scoring.iter_scored(scorer, [sample]))
    roi = io.read_mask(sample.roi_path, scorer.image_size)
    kernel = scorer.kernel
    # Smoothing spreads the masked map by kernel // 2 pixels at most.
    dilated = cv2.dilate(roi, np.ones((kernel, kernel), np.uint8))
    assert np.all(scored.anomaly_map[dilated == 0] == 0.0)


def test_training_logs_test_metrics_for_learning_curves(tiny_run):
    """train.eval_every_epochs logs test-split metrics to history and TensorBoard only."""
    history = run_dir.read_json(os.path.join(tiny_run, run_dir.HISTORY_JSON))
    assert [h["epoch"] for h in history] == [1, 2]
    for entry in history:
        assert 0.0 <= entry["test_image_auroc"] <= 1.0
        assert 0.0 <= entry["test_pixel_auroc"] <= 1.0
    tags = set()
    log_dir = os.path.join(tiny_run, "logs", "validation")
    for name in os.listdir(log_dir):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(log_dir, name)):
            tags.update(v.tag for v in event.summary.value)
    assert {"test/image_auroc", "test/pixel_auroc", "test/aupro"} <= tags
    best = run_dir.read_json(os.path.join(tiny_run, run_dir.BEST_DIR, run_dir.BEST_JSON))
    assert best["metric"] == "val_segmentator_loss"


def test_use_roi_false_gives_whole_image_rois(demo_category):
    import ml_collections
    from grdnet_tf.config import base_config, freeze
    from grdnet_tf.training import train_lib
    config = base_config()
    config.data.image_size = (32, 32)
    config.model.stages = config.model.disc_stages = config.model.seg_depth = 2
    config.train.batch_size = 2
    with_roi = train_lib.load_train_data(freeze(config), demo_category)
    config.data.use_roi = False
    without = train_lib.load_train_data(freeze(config), demo_category)
    assert with_roi.train_cache.rois.mean() < 0.9
    assert without.train_cache.rois.min() == 1


def test_tiled_scoring_stitches_by_averaging_overlaps():
    """A fake model whose map is the tile's mean intensity: stitched values are averages."""
    class MeanModel:
        def __call__(self, images, training=False):
            mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)[..., 0]
            return {keys.RAW_ANOMALY_MAP: tf.broadcast_to(mean, tf.shape(images)[:3]),
                    keys.RECONSTRUCTION: images}

    image = np.zeros((8, 12, 3), np.float32)
    image[:, 6:] = 1.0  # left half 0, right half 1
    params = scoring.ScoringParams(image_size=(8, 8), channels=3, kernel=1, patch_scale=1.0,
                                   patch_stride=2)
    out = scoring.score_working_image(MeanModel(), image, params)
    amap, score = out[keys.ANOMALY_MAP], out[keys.ANOMALY_SCORE]
    # Windows at x = 0, 2, 4 have means 2/8, 4/8, 6/8. Column 0 is covered by x=0 only,
    # column 5 by all three windows, column 11 by x=4 only.
    np.testing.assert_allclose(amap[:, 0], 0.25, atol=1e-6)
    np.testing.assert_allclose(amap[:, 5], (0.25 + 0.5 + 0.75) / 3, atol=1e-6)
    np.testing.assert_allclose(amap[:, 11], 0.75, atol=1e-6)
    assert float(score) == pytest.approx(0.75, abs=1e-6)
    np.testing.assert_allclose(out[keys.RECONSTRUCTION], image, atol=1e-6)
    roi = np.zeros((8, 12), np.float32)
    roi[:, :3] = 1
    masked = scoring.score_working_image(MeanModel(), image, params,
                                         roi=roi)[keys.ANOMALY_SCORE]
    # Inside the ROI (columns 0-2) the largest value is column 2: windows x=0 and x=2.
    assert float(masked) == pytest.approx((0.25 + 0.5) / 2, abs=1e-6)


# Issue #13 item 1: the QA report of the same evaluation.

def test_report_embeds_pictures_and_explains_metrics(evaluated):
    result, out = evaluated
    text = open(os.path.join(out, "report.md"), encoding="utf-8").read()
    for picture in ("roc.png", "histogram.png", "gallery.png"):
        assert f"]({picture})" in text
        assert cv2.imread(os.path.join(out, picture)) is not None
    for key in ("image_auroc", "image_f1_max", "false_alarm_rate"):
        line = next(l for l in text.splitlines() if l.startswith(f"| {key} |"))
        assert line.endswith(f"| {report.METRIC_HELP[key]} |")
    defective = sum(f["count"] for f in result["folders"].values() if f["label"])
    share = defective / 12
    assert f"12 test images, {defective} defective ({100 * share:.0f}%)" in text
    assert f"flagging every image already gives F1 = {2 * share / (1 + share):.3f}" in text
    assert f"pixel threshold of the defect masks: {result['pixel_threshold']:.4f}" in text
    # The tiny run scores with an image baseline (conftest.tiny_run): the report says so.
    assert result["image_baseline"] is True
    assert ("image score = max of the smoothed segmentator map, standardised per place by "
            "the training normals' mean and std") in text
    fp, fn = report.errors(*_labels_scores(out), result["threshold"])
    assert (f"{len(fp)} false positive(s), {len(fn)} false negative(s)") in text


def _labels_scores(out):
    with open(os.path.join(out, "scores.csv")) as f:
        rows = list(csv.DictReader(f))
    return [int(r["label"]) for r in rows], [float(r["score"]) for r in rows]


def test_panels_for_every_error_and_each_folders_top_image(evaluated):
    result, out = evaluated
    labels, scores = _labels_scores(out)
    fp, fn = report.errors(labels, scores, result["threshold"])
    panels = sorted(os.listdir(os.path.join(out, "panels")))
    kinds = [p.split("_", 1)[0] for p in panels]
    assert kinds.count("fp") == min(len(fp), report.MAX_PANELS)
    assert kinds.count("fn") == min(len(fn), report.MAX_PANELS)
    folders = set(result["folders"])
    tops = {p.split("_", 2)[1] for p in panels if p.startswith("top_")}
    assert tops <= folders and len(panels) >= len(folders)   # an error may be a folder's top
    text = open(os.path.join(out, "report.md"), encoding="utf-8").read()
    assert all(f"](panels/{p})" in text for p in panels)
    picture = cv2.imread(os.path.join(out, "panels", panels[0]))
    assert picture.shape[1] > 3 * picture.shape[0]        # four images side by side
