"""Scoring fidelity (the scoring-fidelity issue): the smoothing window follows the input
size and is chosen per model on validation data, the pooling border, removed tiling keys,
raw-map pixel metrics, and patch training / tiled inference at one scale."""
import json
import os
import types

import cv2
import numpy as np
import pytest
import tensorflow as tf

from grdnet_tf import calibration, config as config_lib, keys, run_dir, run_scoring, scoring
from grdnet_tf.data import pipeline, preprocess, tiling
from grdnet_tf.serving import export_lib

from helpers_config import load_tiny_config
from helpers_run import make_tiny_run


def test_paper_window_scales_with_the_input_size():
    assert [scoring.paper_kernel((n, n)) for n in (32, 64, 128, 256, 512)] == [3, 5, 11, 21, 43]
    assert scoring.paper_kernel((128, 96)) == 7            # the shorter side: 7.9 -> 7
    assert scoring.candidate_kernels((128, 128), (1, 5, 11, 21, 41, 61)) == (1, 3, 5, 11, 21,
                                                                            31)


def test_a_small_defect_can_win_at_128_px():
    """A perfect map of a 5x5 px defect (0.15 % of 128x128, tire-sized) peaks at 25/441 =
    0.057 under the paper's 21x21 window (the old default at every size), at 25/121 under
    the window scaled to 128 px."""
    amap = np.zeros((1, 128, 128), np.float32)
    amap[0, 60:65, 60:65] = 1.0
    old = float(scoring.image_score(scoring.smooth(amap, 21))[0])
    new = float(scoring.image_score(scoring.smooth(
        amap, scoring.paper_kernel((128, 128))))[0])
    assert old == pytest.approx(25 / 441) and new == pytest.approx(25 / 121)
    default = config_lib.with_overrides(load_tiny_config(), {"scoring.smoothing_kernel": 0,
                                                             "data.image_size": (128, 128)})
    assert scoring.resolve_kernel(default) == 11


def test_kernel_resolution_order():
    config = config_lib.with_overrides(load_tiny_config(), {"scoring.smoothing_kernel": 0})
    assert scoring.resolve_kernel(config) == 3                               # 32 px
    assert scoring.resolve_kernel(config, {"smoothing_kernel": 7}) == 7      # calibrated
    explicit = config_lib.with_overrides(config, {"scoring.smoothing_kernel": 9})
    assert scoring.resolve_kernel(explicit, {"smoothing_kernel": 7}) == 9    # config wins
    with pytest.raises(ValueError, match="smoothing_kernel"):
        config_lib.with_overrides(config, {"scoring.smoothing_kernel": 4})


def test_pooling_counts_the_zero_padding():
    """A defect in a corner scores what the same defect scores in the middle: the window
    always divides by k*k (the map is zero outside the image, as DRAEM pools). Excluding
    the padding, as TF's SAME average pooling does, would score the corner 1.0, the middle
    0.36: border artefacts of the reconstruction would become false alarms."""
    maps = np.zeros((2, 32, 32), np.float32)
    maps[0, :3, :3] = 1.0
    maps[1, 14:17, 14:17] = 1.0
    scores = scoring.image_score(scoring.smooth(maps, 5)).numpy()
    assert scores[0] == pytest.approx(scores[1]) == pytest.approx(9 / 25)
    excluding = tf.nn.avg_pool2d(maps[..., None], 5, 1, "SAME").numpy().max(axis=(1, 2, 3))
    assert excluding[0] == pytest.approx(1.0) and excluding[1] == pytest.approx(9 / 25)
    ones = scoring.smooth(np.ones((1, 8, 8), np.float32), 5).numpy()
    assert ones[0, 0, 0] == pytest.approx(9 / 25) and ones[0, 4, 4] == pytest.approx(1.0)


def _cal_set(normal_noise, anomaly):
    rng = np.random.default_rng(0)
    clean = rng.random((20, 32, 32)).astype(np.float32) * 0.1
    clean[np.arange(20), rng.integers(0, 32, 20), rng.integers(0, 32, 20)] = normal_noise
    synthetic = rng.random((20, 32, 32)).astype(np.float32) * 0.1
    for i in range(20):
        y, x = rng.integers(4, 24, 2)
        synthetic[i] = np.maximum(synthetic[i], anomaly(y, x))
    return calibration.CalibrationSet(clean, synthetic, np.ones(20, np.int64))


def test_select_kernel_prefers_a_wide_window_for_blobs_among_spikes():
    """Normals with one bright pixel each, anomalies as moderate 8x8 blobs: without
    smoothing the spikes win (AUROC 0), wide windows separate the classes."""
    def blob(y, x):
        m = np.zeros((32, 32), np.float32)
        m[y:y + 8, x:x + 8] = 0.5
        return m
    cal = _cal_set(1.0, blob)
    kernel, aurocs = calibration.select_kernel(cal, (1, 3, 5, 9), reference=3)
    assert aurocs[1] == 0.0 and aurocs[9] == 1.0 and kernel != 1
    assert aurocs[kernel] == 1.0


def test_select_kernel_keeps_thin_lines_unsmoothed():
    """Anomalies as 1 px thin bright lines, normals with diffuse moderate haze: no smoothing
    is best (a wide window averages the line away)."""
    def line(y, x):
        m = np.zeros((32, 32), np.float32)
        m[y, :] = 0.9
        return m
    rng = np.random.default_rng(1)
    cal = _cal_set(0.0, line)
    cal.clean_maps[:] = np.clip(cal.clean_maps + 0.45 + 0.02 * rng.standard_normal(
        cal.clean_maps.shape), 0, 1).astype(np.float32)
    kernel, aurocs = calibration.select_kernel(cal, (1, 3, 9, 21), reference=9)
    assert kernel == 1 and aurocs[1] == 1.0 and aurocs[21] < 1.0


def test_select_kernel_without_both_classes_falls_back_to_the_reference():
    cal = calibration.CalibrationSet(np.zeros((3, 8, 8), np.float32),
                                     np.zeros((0, 8, 8), np.float32), np.zeros(0, np.int64))
    assert calibration.select_kernel(cal, (1, 3), reference=3) == (3, {1: None, 3: None})


def test_calibrate_chooses_the_window_on_validation_data(demo_category):
    """The real path: a tiny model, the demo validation split, synthetic draws; the window
    is one of the scaled candidates and the threshold comes from the clean normals' scores
    with that window."""
    from grdnet_tf.models import build_grdnet
    from grdnet_tf.training import train_lib
    config = config_lib.with_overrides(load_tiny_config(), {"scoring.smoothing_kernel": 0,
                                                            "data.val_fraction": 0.3})
    data = train_lib.load_train_data(config, demo_category)
    model = build_grdnet(config)
    result = calibration.calibrate(model, config, data.val_cache)
    assert result["smoothing_source"] == "validation"
    candidates = scoring.candidate_kernels((32, 32), config.scoring.smoothing_candidates)
    assert sorted(int(k) for k in result["smoothing_candidates"]) == list(candidates)
    assert result["smoothing_kernel"] in candidates
    assert result["num_synthetic_anomalies"] > 0
    scores = calibration.image_scores(calibration.normal_maps(model, config, data.val_cache),
                                      result["smoothing_kernel"])
    np.testing.assert_allclose(result["scores"], scores, atol=1e-6)
    assert result["threshold"] == pytest.approx(np.quantile(scores, 0.99))


def test_removed_tiling_keys():
    values = json.loads(config_lib.to_json(config_lib.freeze(load_tiny_config())))
    values["scoring"].update(tile_size=0, tile_stride=0)      # an older run's config.json
    assert config_lib.from_dict(values).scoring.smoothing_kernel == 3
    values["scoring"]["tile_size"] = 256
    with pytest.raises(ValueError, match="data.patch_scale"):
        config_lib.from_dict(values)


def test_pixel_metrics_use_the_raw_map_and_report_the_smoothed_one(tiny_run, demo_category):
    run = run_dir.load_for_inference(tiny_run)
    scorer = run_scoring.Scorer(run)
    split = run_scoring.score_test_split(scorer, demo_category)
    from grdnet_tf.data import io, mvtec
    from grdnet_tf.evaluation import metrics
    samples = [s for s in mvtec.index_test(demo_category)]
    scored = list(run_scoring.iter_scored(scorer, samples))
    masks = [np.zeros(s.raw_map.shape, np.uint8) if s.sample.label == 0 else
             preprocess.model_mask(io.read_mask(s.sample.mask_path)[None],
                                   s.raw_map.shape)[0].numpy() for s in scored]
    assert split.metrics["pixel_maps"] == "raw"
    assert split.metrics["pixel_auroc"] == pytest.approx(
        metrics.pixel_auroc(masks, [s.raw_map for s in scored]))
    assert split.metrics["pixel_auroc_smoothed"] == pytest.approx(
        metrics.pixel_auroc(masks, [s.anomaly_map for s in scored]))


# Patch mode ------------------------------------------------------------------------------

PATCH = {"data.patch_scale": 0.5, "data.patch_stride": 16}


def _native(seed, shape=(70, 90, 3)):
    rng = np.random.default_rng(seed)
    coarse = rng.random((8, 10, 3)).astype(np.float32)
    return np.clip(cv2.resize(coarse, shape[1::-1]) * 255, 0, 255).astype(np.uint8)


def test_a_tile_is_the_training_crop_of_the_same_region(tmp_path):
    """Patch mode, clean and unaugmented: the training stream's grid patch at (y, x) equals
    bit for bit the inference tile at (y, x) of the same file."""
    config = config_lib.with_overrides(load_tiny_config(), {
        **PATCH, "data.patch_sampling": "grid", "synthesis.anomaly_prob": 0.0,
        "synthesis.rotation_deg": 0.0})
    native = _native(0)
    path = str(tmp_path / "a.png")
    cv2.imwrite(path, cv2.cvtColor(native, cv2.COLOR_RGB2BGR))
    cache = pipeline.load_cache([types.SimpleNamespace(path=path, roi_path=None)], (32, 32),
                                3, patch_scale=0.5)
    assert tuple(cache.sizes[0]) == (35, 45)
    table = pipeline.grid_patches(cache, (32, 32), 16)
    assert table[:, 1:].tolist() == [[0, 0], [0, 13], [3, 0], [3, 13]]
    params = scoring.ScoringParams.from_run(config)
    working = scoring.working_input(tf.constant(native), params)
    tiles = tiling.extract(working, tiling.grid(35, 45, (32, 32), 16), (32, 32)).numpy()
    fn = pipeline.synthesis_fn(config, cache, augment=False)
    for k, (index, y, x) in enumerate(table):
        crop = fn(tf.constant(k, tf.int64), index, tf.constant([y, x]))[keys.IMAGE].numpy()
        np.testing.assert_array_equal(crop, tiles[k])


def test_patch_training_stream_and_epoch_length(tmp_path):
    config = config_lib.with_overrides(load_tiny_config(), PATCH)
    paths = []
    for i in range(3):
        paths.append(str(tmp_path / f"{i}.png"))
        cv2.imwrite(paths[-1], _native(i, (70 + 10 * i, 90, 3)))
    cache = pipeline.load_cache([types.SimpleNamespace(path=p, roi_path=None)
                                 for p in paths], (32, 32), 3, patch_scale=0.5)
    assert cache.sizes.tolist() == [[35, 45], [40, 45], [45, 45]]
    assert pipeline.items_per_epoch(config, cache) == len(pipeline.grid_patches(
        cache, (32, 32), 16)) == 4 + 4 + 4
    batch = next(iter(pipeline.train_dataset(config, cache, 4)))
    assert batch[keys.IMAGE].shape == (4, 32, 32, 3)
    val = list(pipeline.validation_dataset(config, cache, 8))
    assert sum(int(b[keys.IMAGE].shape[0]) for b in val) == len(
        pipeline.grid_patches(cache, (32, 32), 32))


@pytest.fixture(scope="module")
def patch_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("patch_run")
    model_dir = str(root / "run")
    make_tiny_run(model_dir, overrides=PATCH)
    return types.SimpleNamespace(root=root, model_dir=model_dir)


def test_patch_mode_evaluation_and_export_score_alike(patch_run):
    """Tiled scoring in the run's scorer and in the SavedModel's graph give the same score
    and map for an image at its native size; the map covers the whole image."""
    loaded = run_dir.load_for_inference(patch_run.model_dir)
    scorer = run_scoring.Scorer(loaded)
    assert scorer.patches and scorer.params.patch_stride == 16
    native = _native(3)
    scored = next(run_scoring.iter_scored(scorer, [_write(patch_run.root, native)]))
    assert scored.anomaly_map.shape == (35, 45)          # the working size
    version_dir = export_lib.export_model(loaded, str(patch_run.root / "export"))
    saved = tf.saved_model.load(version_dir)
    served = saved.signatures["serving_default"](images=tf.constant(native[None]))
    np.testing.assert_allclose(served[keys.ANOMALY_SCORE].numpy(), [scored.anomaly_score],
                               atol=1e-5)
    assert served[keys.ANOMALY_MAP].shape == (1, 70, 90)
    expected = preprocess.resize(scored.anomaly_map[None, ..., None], (70, 90))[0, ..., 0]
    np.testing.assert_allclose(served[keys.ANOMALY_MAP][0], expected, atol=1e-4)
    metadata = export_lib.read_metadata(version_dir)
    assert metadata["patch_scale"] == 0.5 and metadata["patch_stride"] == 16


def _write(root, image):
    path = os.path.join(str(root), "img.png")
    cv2.imwrite(path, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return path


def test_too_few_validation_normals_for_the_quantile_warn():
    assert calibration.threshold_support_warning(100, 0.99) is None
    warning = calibration.threshold_support_warning(12, 0.99)
    assert "only 12 validation normals" in warning and "at least 100" in warning
    assert calibration.threshold_support_warning(12, 0.9) is None
    assert "at least 20" in calibration.threshold_support_warning(19, 0.95)


def test_the_report_says_what_the_threshold_rests_on(tiny_run, tiny_evaluation):
    cal = run_dir.read_calibration(tiny_run)
    result, out = tiny_evaluation
    report = open(os.path.join(out, "report.md")).read()
    assert (f"(quantile {cal['quantile']} of {cal['num_images']} validation normals)"
            in report)
    assert cal["warning"] in result["notes"] and cal["warning"] in report
