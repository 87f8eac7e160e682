"""scoring.pixel_map / scoring.image_map: the segmentator map A (the paper, default), the
reconstruction residual R_n, their mean, or chosen on the calibration set ("auto")."""
import dataclasses
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from grdnet_tf import calibration, config as config_lib, keys, run_dir, run_scoring, scoring
from grdnet_tf.serving import export_lib

from helpers_config import load_tiny_config
from helpers_run import make_tiny_run


class PixelModel:
    """A pixelwise stand-in for GRDNet: A = channel 0 of the input, X̂ = the input with
    channel 1 zeroed, so R = channel 1 / 3."""

    def __call__(self, images, training=False):
        images = tf.convert_to_tensor(images, tf.float32)
        keep = tf.constant([1.0, 0.0, 1.0])
        return {keys.RAW_ANOMALY_MAP: images[..., 0], keys.RECONSTRUCTION: images * keep}


def _spikes(width=4):
    """[1, 4, width, 3]: A = 0.9 at (0, 0), R = 0.6 / 3 = 0.2 at (2, 2)."""
    image = np.zeros((1, 4, width, 3), np.float32)
    image[0, 0, 0, 0] = 0.9
    image[0, 2, 2, 1] = 0.6
    return image


def _params(pixel_map="segmentator", image_map="segmentator", scale=1.0, **kwargs):
    return scoring.ScoringParams(image_size=(4, 4), channels=3, kernel=3, pixel_map=pixel_map,
                                 image_map=image_map, residual_scale=scale, **kwargs)


def test_source_map_numbers():
    seg = np.array([[0.2, 0.4, 0.0]], np.float32)
    residual = np.array([[0.05, 0.3, 0.02]], np.float32)
    assert scoring.source_map("segmentator", seg, None, 0.1) is seg
    np.testing.assert_allclose(scoring.source_map("residual", seg, residual, 0.1),
                               [[0.5, 1.0, 0.2]], rtol=1e-6)     # clipped at 1
    np.testing.assert_allclose(scoring.source_map("sum", seg, residual, 0.1),
                               [[0.35, 0.7, 0.1]], rtol=1e-6)
    with pytest.raises(ValueError, match="product"):
        scoring.source_map("product", seg, residual, 0.1)
    image = np.array([[[0.2, 0.4, 1.0]]], np.float32)
    np.testing.assert_allclose(scoring.residual_map(image, np.full((1, 1, 3), 0.5)),
                               [[(0.3 + 0.1 + 0.5) / 3]], rtol=1e-6)
    with pytest.raises(ValueError, match="residual_scale"):
        _params(scale=0.0)
    with pytest.raises(ValueError, match="pixel_map='auto'"):
        _params(pixel_map="auto")


def test_default_scoring_is_the_old_segmentator_path():
    """segmentator/segmentator (the default) gives what the code gave before the option:
    A (ROI-masked), its 3x3 mean (zeros padded), the max."""
    image, roi = _spikes(), np.ones((1, 4, 4), np.float32)
    old_raw = PixelModel()(image)[keys.RAW_ANOMALY_MAP] * roi
    old_smoothed = tf.nn.avg_pool2d(tf.pad(old_raw[..., None], [[0, 0], [1, 1], [1, 1], [0, 0]]),
                                    3, 1, "VALID")[..., 0]
    out = scoring.score_model_inputs(PixelModel(), image, _params(), roi=roi)
    np.testing.assert_array_equal(out[keys.RAW_ANOMALY_MAP], old_raw)
    np.testing.assert_array_equal(out[keys.ANOMALY_MAP], old_smoothed)
    np.testing.assert_array_equal(out[keys.ANOMALY_SCORE], [np.max(old_smoothed)])
    assert out[keys.ANOMALY_SCORE].numpy()[0] == pytest.approx(0.1, abs=1e-7)  # 0.9 / 9


def test_residual_and_sum_change_the_maps_as_defined():
    image = _spikes()
    residual = scoring.score_model_inputs(PixelModel(), image, _params("residual", "residual",
                                                                       0.4))
    assert residual[keys.RAW_ANOMALY_MAP].numpy()[0, 2, 2] == pytest.approx(0.5)  # 0.2 / 0.4
    assert residual[keys.RAW_ANOMALY_MAP].numpy()[0, 0, 0] == 0.0
    assert residual[keys.ANOMALY_SCORE].numpy()[0] == pytest.approx(0.5 / 9)
    mixed = scoring.score_model_inputs(PixelModel(), image, _params("sum", "segmentator", 0.4))
    raw = mixed[keys.RAW_ANOMALY_MAP].numpy()[0]
    assert raw[0, 0] == pytest.approx(0.45) and raw[2, 2] == pytest.approx(0.25)
    # The 3x3 window at (1, 1) holds both: (0.45 + 0.25) / 9; the score stays A's 0.9 / 9.
    assert mixed[keys.ANOMALY_MAP].numpy()[0].max() == pytest.approx(0.7 / 9)
    assert mixed[keys.ANOMALY_SCORE].numpy()[0] == pytest.approx(0.1)
    # The ROI masks A and R alike: only the residual's half of (0, 0) ... is gone with A.
    roi = np.ones((1, 4, 4), np.float32)
    roi[0, 0, 0] = 0.0
    masked = scoring.score_model_inputs(PixelModel(), image, _params("sum", "sum", 0.4), roi=roi)
    assert masked[keys.RAW_ANOMALY_MAP].numpy()[0, 0, 0] == 0.0
    assert masked[keys.ANOMALY_SCORE].numpy()[0] == pytest.approx(0.25 / 9)


def test_patch_mode_residual_is_of_the_stitched_reconstruction():
    """A pixelwise model: tiles stitched back give the whole image's maps, so patch mode
    scores as the whole image does, for every source."""
    image = _spikes(width=6)
    for pixel_map, image_map in (("sum", "residual"), ("residual", "segmentator")):
        whole = scoring.score_model_inputs(PixelModel(), image,
                                           _params(pixel_map, image_map, 0.4))
        tiled = scoring.score_working_image(PixelModel(), image[0], _params(
            pixel_map, image_map, 0.4, patch_scale=1.0, patch_stride=2))
        np.testing.assert_allclose(tiled[keys.ANOMALY_MAP], whole[keys.ANOMALY_MAP][0],
                                   atol=1e-7)
        np.testing.assert_allclose(tiled[keys.ANOMALY_SCORE], whole[keys.ANOMALY_SCORE][0],
                                   atol=1e-7)
    assert tiled[keys.ANOMALY_SCORE].numpy() == pytest.approx(0.1)


def test_params_from_run_resolve_config_then_calibration_then_segmentator():
    config = load_tiny_config()
    auto = config_lib.with_overrides(config, {"scoring.pixel_map": "auto",
                                              "scoring.image_map": "auto"})
    old = {"threshold": 0.3, "smoothing_kernel": 5}        # calibrated before the option
    for cfg in (config, auto):
        params = scoring.ScoringParams.from_run(cfg, old)
        assert (params.pixel_map, params.image_map, params.residual_scale) == (
            "segmentator", "segmentator", 1.0)
    chosen = {**old, "pixel_map": "sum", "image_map": "segmentator", "residual_scale": 0.2}
    assert scoring.resolve_maps(auto, chosen) == ("sum", "segmentator", 0.2)
    assert scoring.resolve_maps(config, chosen) == ("segmentator", "segmentator", 1.0)
    explicit = config_lib.with_overrides(config, {"scoring.image_map": "residual"})
    assert scoring.resolve_maps(explicit, chosen) == ("segmentator", "residual", 0.2)
    assert scoring.resolve_maps(explicit, old) == ("segmentator", "residual", 1.0)
    with pytest.raises(ValueError, match="calibration.json image_map='product'"):
        scoring.resolve_maps(auto, {"image_map": "product"})
    with pytest.raises(ValueError, match="scoring.pixel_map"):
        config_lib.with_overrides(config, {"scoring.pixel_map": "product"})


def _constructed_set(residual_better):
    """Synthetic anomalies: a 4x4 blob in one map, noise of the same level in the other.
    The better map shows the blob; the other one's "anomaly" sits elsewhere at random."""
    rng = np.random.default_rng(0)
    n, size = 12, 16
    clean_seg = rng.random((n, size, size)).astype(np.float32) * 0.2
    clean_res = rng.random((n, size, size)).astype(np.float32) * 0.02
    syn_seg = rng.random((n, size, size)).astype(np.float32) * 0.2
    syn_res = rng.random((n, size, size)).astype(np.float32) * 0.02
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        y, x = rng.integers(0, size - 4, 2)
        masks[i, y:y + 4, x:x + 4] = 1
        good, bad = (syn_res, syn_seg) if residual_better else (syn_seg, syn_res)
        level = 0.02 if residual_better else 0.2
        good[i, y:y + 4, x:x + 4] += level
        clean = clean_seg if residual_better else clean_res   # the worse map's normals ...
        clean[i, rng.integers(0, size), rng.integers(0, size)] += 5 * (0.2 if residual_better
                                                                       else 0.02)
    return calibration.CalibrationSet(
        clean_seg, syn_seg, np.ones(n, np.int64), masks, clean_residuals=clean_res,
        synthetic_residuals=syn_res, residual_scale=calibration.residual_scale(clean_res))


@pytest.mark.parametrize("residual_better", [True, False])
def test_auto_picks_the_source_with_the_higher_validation_auroc(residual_better):
    cal_set = _constructed_set(residual_better)
    assert cal_set.residual_scale == pytest.approx(np.quantile(cal_set.clean_residuals, 0.999))
    source, kernel, aurocs = calibration.select_image_map(cal_set, cal_set.sources(),
                                                          (1, 3), 3)
    pixel, pixel_aurocs = calibration.select_pixel_map(cal_set, cal_set.sources(), kernel)
    want = "residual" if residual_better else "segmentator"
    assert source == want and pixel in ((want, "sum") if residual_better else (want,))
    other = "segmentator" if residual_better else "residual"
    assert aurocs[want][kernel] > aurocs[other][kernel] + 0.2
    assert pixel_aurocs[want] > pixel_aurocs[other] + 0.1
    assert pixel_aurocs[pixel] == max(pixel_aurocs.values())


def test_auto_ties_go_to_the_segmentator():
    """Residuals equal to the maps at scale 1: every source scores alike."""
    cal_set = _constructed_set(False)
    same = dataclasses.replace(cal_set, clean_residuals=cal_set.clean_maps,
                               synthetic_residuals=cal_set.synthetic_maps, residual_scale=1.0)
    assert calibration.select_image_map(same, same.sources(), (3,), 3)[0] == "segmentator"
    assert calibration.select_pixel_map(same, same.sources(), 3)[0] == "segmentator"
    no_residuals = calibration.CalibrationSet(cal_set.clean_maps, cal_set.synthetic_maps,
                                              cal_set.synthetic_labels, cal_set.synthetic_masks)
    assert no_residuals.sources() == ("segmentator",)


def test_calibrate_auto_records_the_choice_and_scores_with_it(demo_category):
    """The real path on a tiny untrained model: what is chosen is the best candidate, the
    threshold comes from the chosen image map, the scale from the clean residuals."""
    from grdnet_tf.models import build_grdnet
    from grdnet_tf.training import train_lib
    config = config_lib.with_overrides(load_tiny_config(), {
        "data.val_fraction": 0.3, "scoring.pixel_map": "auto", "scoring.image_map": "auto"})
    data = train_lib.load_train_data(config, demo_category)
    model = build_grdnet(config)
    lines = []
    result = calibration.calibrate(model, config, data.val_cache, log_fn=lines.append)
    kernel = result["smoothing_kernel"]                     # tiny config: 3, explicit
    image_aurocs = {s: row[str(kernel)] for s, row in result["image_map_candidates"].items()}
    assert set(image_aurocs) == {"segmentator", "residual", "sum"}
    assert image_aurocs[result["image_map"]] == max(image_aurocs.values())
    pixel_aurocs = result["pixel_map_candidates"]
    assert pixel_aurocs[result["pixel_map"]] == max(pixel_aurocs.values())
    assert result["pixel_map_source"] == result["image_map_source"] == "validation"
    from grdnet_tf.data import preprocess
    _, residuals = calibration.raw_maps(model, preprocess.to_unit(data.val_cache.images))
    assert result["residual_scale"] == pytest.approx(np.quantile(residuals, 0.999), rel=1e-5)
    params = scoring.ScoringParams.from_run(config, result)
    assert (params.pixel_map, params.image_map) == (result["pixel_map"], result["image_map"])
    scores = calibration.image_scores(
        calibration.normal_maps(model, config, data.val_cache, params), kernel)
    np.testing.assert_allclose(result["scores"], scores, atol=1e-6)
    assert "image map " + result["image_map"] in lines[-1]
    assert "pixel map " + result["pixel_map"] in lines[-1]


def test_calibration_mask_area_sets_the_size_of_the_calibration_anomalies(demo_category):
    """scoring.calibration_mask_area_min / max pin the calibration draws' mask area (min =
    max: exactly that fraction of the image, as synthesis.mask_area_*), and only theirs:
    unset, the calibration set uses the training synthesis' config itself."""
    from grdnet_tf.models import build_grdnet
    from grdnet_tf.training import train_lib
    config = config_lib.with_overrides(load_tiny_config(), {
        "data.val_fraction": 0.3, "data.use_roi": False, "synthesis.anomaly_prob": 1.0})
    assert calibration.synthesis_config(config) is config
    data = train_lib.load_train_data(config, demo_category)
    model = build_grdnet(config)
    default = calibration.calibration_set(model, config, data.val_cache, repeats=2)
    small = config_lib.with_overrides(config, {"scoring.calibration_mask_area_min": 0.01,
                                               "scoring.calibration_mask_area_max": 0.01})
    assert calibration.synthesis_config(small).synthesis.mask_area_max == 0.01
    assert small.synthesis.mask_area_max == 0.0              # training synthesis unchanged
    cal_set = calibration.calibration_set(model, small, data.val_cache, repeats=2)
    lines = []
    calibration.calibrate(model, small, data.val_cache, log_fn=lines.append)
    assert "synthetic anomalies of each (1-1 % of the image" in lines[0]
    height, width = config.data.image_size
    areas = cal_set.synthetic_masks.reshape(len(cal_set.synthetic_masks), -1).sum(axis=1)
    assert len(areas) == 2 * len(data.val_cache)
    assert set(areas.tolist()) == {round(0.01 * height * width)}
    default_areas = default.synthetic_masks.reshape(len(default.synthetic_masks), -1).mean(1)
    assert np.median(default_areas) > 0.03                   # Perlin threshold: larger blobs
    np.testing.assert_array_equal(cal_set.clean_maps, default.clean_maps)


@pytest.fixture(scope="module")
def sum_run(tmp_path_factory):
    """A tiny run configured with pixel_map=sum, image_map=segmentator and a residual
    scale in its calibration.json."""
    model_dir = str(tmp_path_factory.mktemp("sources") / "run")
    make_tiny_run(model_dir, threshold=0.5, overrides={"scoring.pixel_map": "sum"})
    path = os.path.join(model_dir, run_dir.CALIBRATION_JSON)
    with open(path, encoding="utf-8") as f:
        cal = json.load(f)
    cal["residual_scale"] = 0.05
    run_dir.write_json(path, cal)
    return model_dir


def test_saved_model_serves_the_configured_maps(sum_run, tmp_path):
    loaded = run_dir.load_for_inference(sum_run)
    params = scoring.ScoringParams.from_run(loaded.config, loaded.calibration)
    assert (params.pixel_map, params.image_map, params.residual_scale) == (
        "sum", "segmentator", 0.05)
    version_dir = export_lib.export_model(loaded, str(tmp_path / "export"), model_dir=sum_run)
    metadata = export_lib.read_metadata(version_dir)
    assert (metadata["pixel_map"], metadata["image_map"], metadata["residual_scale"]) == (
        "sum", "segmentator", 0.05)
    images = (np.random.default_rng(3).random((2, 40, 36, 3)) * 255).astype(np.uint8)
    served = tf.saved_model.load(version_dir).signatures["serving_default"](
        images=tf.constant(images))
    in_process = scoring.score_images(loaded.model, images, params, 0.5)
    for key in (keys.ANOMALY_MAP, keys.ANOMALY_SCORE):
        np.testing.assert_allclose(served[key].numpy(), in_process[key].numpy(), atol=1e-5)
    paper = scoring.score_images(loaded.model, images,
                                 dataclasses.replace(params, pixel_map="segmentator"), 0.5)
    np.testing.assert_allclose(served[keys.ANOMALY_SCORE].numpy(),
                               paper[keys.ANOMALY_SCORE].numpy(), atol=1e-5)
    assert np.abs(served[keys.ANOMALY_MAP].numpy() - paper[keys.ANOMALY_MAP].numpy()).max() > 1e-3


def test_tiny_run_default_scoring_is_bit_identical_to_the_segmentator_path(sum_run):
    """The default params (segmentator/segmentator) equal the code before the option
    (A, ROI-masked -> smooth -> max, traced like the Scorer's graph) on the real model, bit
    for bit, through the run's Scorer."""
    loaded = run_dir.load_for_inference(sum_run)
    default = dataclasses.replace(scoring.ScoringParams.from_run(loaded.config),
                                  pixel_map="segmentator")
    images = np.random.default_rng(4).random((3, 32, 32, 3)).astype(np.float32)
    roi = np.ones((3, 32, 32), np.float32)
    roi[:, :4] = 0.0
    out = run_scoring.Scorer(loaded, params=default).score_batch(list(images), list(roi))

    @tf.function
    def before(x, r):
        raw = loaded.model(x, training=False)[keys.RAW_ANOMALY_MAP] * r
        smoothed = scoring.smooth(raw, default.kernel)
        return raw, smoothed, tf.reduce_max(smoothed, axis=[1, 2])

    raw, smoothed, score = (t.numpy() for t in before(tf.constant(images), tf.constant(roi)))
    np.testing.assert_array_equal(out[keys.RAW_ANOMALY_MAP], raw)
    np.testing.assert_array_equal(out[keys.ANOMALY_MAP], smoothed)
    np.testing.assert_array_equal(out[keys.ANOMALY_SCORE], score)
    summed = run_scoring.Scorer(loaded).score_batch(list(images), list(roi))
    np.testing.assert_array_equal(summed[keys.ANOMALY_SCORE], out[keys.ANOMALY_SCORE])
    assert np.abs(summed[keys.RAW_ANOMALY_MAP] - out[keys.RAW_ANOMALY_MAP]).max() > 1e-3
