"""scoring.image_baseline: the image score as a deviation from what normal images score at
the same place ("position"), chosen on validation ("auto"), stored next to calibration.json
and baked into the exports."""
import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf

from grdnet_tf import calibration, config as config_lib, keys, run_dir, run_scoring, scoring
from grdnet_tf.serving import export_lib

from helpers_config import load_tiny_config
from helpers_run import make_tiny_run


class PixelModel:
    """Pixelwise stand-in for GRDNet: A = channel 0 of the input, X̂ = the input."""

    def __call__(self, images, training=False):
        images = tf.convert_to_tensor(images, tf.float32)
        return {keys.RAW_ANOMALY_MAP: images[..., 0], keys.RECONSTRUCTION: images}


def test_baseline_statistics_and_standardisation_numbers():
    maps = np.array([[[0.0, 1.0], [0.2, 0.2]],
                     [[0.2, 3.0], [0.2, 0.4]]], np.float32)
    baseline = scoring.ImageBaseline.from_maps(maps)
    np.testing.assert_allclose(baseline.mean, [[0.1, 2.0], [0.2, 0.3]], rtol=1e-6)
    # std per pixel 0.1, 1.0, 0, 0.1: the median 0.1 floors the constant pixel.
    assert baseline.std_floor == pytest.approx(0.1)
    np.testing.assert_allclose(baseline.std, [[0.1, 1.0], [0.1, 0.1]], rtol=1e-6)
    assert baseline.num_images == 2 and baseline.shape == (2, 2)
    z = baseline.standardize(np.array([[[0.5, 2.0], [0.2, 0.0]]], np.float32)).numpy()
    np.testing.assert_allclose(z, [[[4.0, 0.0], [0.0, -3.0]]], rtol=1e-5, atol=1e-6)
    constant = scoring.ImageBaseline.from_maps(np.ones((3, 2, 2), np.float32))
    assert constant.std_floor == pytest.approx(1e-6)   # normals that never vary
    with pytest.raises(ValueError, match="at least 2"):
        scoring.ImageBaseline.from_maps(maps[:1])
    with pytest.raises(ValueError, match="one shape"):
        scoring.ImageBaseline(mean=np.zeros((2, 2)), std=np.ones((2, 3)))
    with pytest.raises(ValueError, match="> 0"):
        scoring.ImageBaseline(mean=np.zeros((2, 2)), std=np.zeros((2, 2)))


def _params(baseline=None, **kwargs):
    return scoring.ScoringParams(image_size=(8, 8), channels=3, kernel=3,
                                 image_baseline=baseline, **kwargs)


def _highlight_images(n, rng, defect=None):
    """[n, 8, 8, 3]: noise 0.1-0.2 and a highlight of 0.9 at rows 3-4, columns 3-4 on
    every image (a place normals always score high); `defect` adds 0.4 at (0, 7)."""
    images = 0.1 + 0.1 * rng.random((n, 8, 8, 3)).astype(np.float32)
    images[:, 3:5, 3:5, 0] = 0.9
    if defect:
        images[:, 0:2, 6:8, 0] += 0.4
    return images


def test_position_baseline_lets_a_small_defect_outrank_a_highlight_normals_share():
    rng = np.random.default_rng(0)
    normals = _highlight_images(16, rng)
    baseline = scoring.ImageBaseline.from_maps(normals[..., 0])
    clean, defective = _highlight_images(1, rng), _highlight_images(1, rng, defect=True)
    plain = [scoring.score_model_inputs(PixelModel(), x, _params())[keys.ANOMALY_SCORE]
             .numpy()[0] for x in (clean, defective)]
    assert plain[0] == pytest.approx(plain[1], abs=0.02)   # the highlight is the max of both
    out = [scoring.score_model_inputs(PixelModel(), x, _params(baseline)) for x in
           (clean, defective)]
    assert out[1][keys.ANOMALY_SCORE].numpy()[0] > out[0][keys.ANOMALY_SCORE].numpy()[0] + 3
    # The score is the max of the 3x3 mean (zeros padded) of (A - mean) / std ...
    z = (defective[0, ..., 0] - baseline.mean) / baseline.std
    smoothed = scoring.smooth(tf.constant(z[None]), 3).numpy()[0]
    assert out[1][keys.ANOMALY_SCORE].numpy()[0] == pytest.approx(smoothed.max(), rel=1e-5)
    # ... and the pixel outputs are the paper's, untouched.
    paper = scoring.score_model_inputs(PixelModel(), defective, _params())
    for key in (keys.RAW_ANOMALY_MAP, keys.ANOMALY_MAP):
        np.testing.assert_array_equal(out[1][key], paper[key])


def test_params_refuse_a_baseline_of_another_size_or_in_patch_mode():
    baseline = scoring.ImageBaseline(mean=np.zeros((4, 4)), std=np.ones((4, 4)))
    with pytest.raises(ValueError, match=r"\(4, 4\), the model input \(8, 8\)"):
        _params(baseline)
    full = scoring.ImageBaseline(mean=np.zeros((8, 8)), std=np.ones((8, 8)))
    with pytest.raises(ValueError, match="patch_scale=0"):
        _params(full, patch_scale=1.0, patch_stride=4)
    with pytest.raises(ValueError, match="needs whole images"):
        config_lib.with_overrides(load_tiny_config(), {"scoring.image_baseline": "position",
                                                       "data.patch_scale": 1.0})
    with pytest.raises(ValueError, match="scoring.image_baseline"):
        config_lib.with_overrides(load_tiny_config(), {"scoring.image_baseline": "zscore"})


def _highlight_set(defect_level):
    """Clean normals and synthetic draws sharing the highlight; each draw has a 2x2 blob of
    `defect_level` at a random place. Returns (CalibrationSet, {source: ImageBaseline})."""
    rng = np.random.default_rng(1)
    clean = _highlight_images(12, rng)[..., 0]
    synthetic = _highlight_images(12, rng)[..., 0]
    masks = np.zeros(synthetic.shape, np.uint8)
    for i in range(len(synthetic)):
        y, x = rng.integers(0, 2, 2) * 5   # a corner, off the highlight
        synthetic[i, y:y + 2, x:x + 2] += defect_level
        masks[i, y:y + 2, x:x + 2] = 1
    cal_set = calibration.CalibrationSet(clean, synthetic, np.ones(12, np.int64), masks)
    train = _highlight_images(20, rng)[..., 0]
    return cal_set, {"segmentator": scoring.ImageBaseline.from_maps(train)}


def test_auto_takes_the_position_baseline_when_it_ranks_the_draws_better():
    cal_set, baselines = _highlight_set(0.4)
    source, option, kernel, aurocs = calibration.select_image_scoring(
        cal_set, ("segmentator",), (1, 3), 3, baselines, ("none", "position"))
    assert (source, option) == ("segmentator", "position")
    assert aurocs["position"]["segmentator"][kernel] == 1.0
    assert aurocs["none"]["segmentator"][1] == 0.5   # raw: the highlight is every max
    assert max(aurocs["none"]["segmentator"].values()) < 0.8
    # An anomaly above the highlight: both rank it perfectly, and the tie goes to "none".
    cal_set, baselines = _highlight_set(2.0)
    assert calibration.select_image_scoring(cal_set, ("segmentator",), (1,), 1, baselines,
                                            ("none", "position"))[1] == "none"


@pytest.fixture(scope="module")
def baseline_run(tmp_path_factory, demo_category):
    """A tiny run at the demo's size, calibrated with scoring.image_baseline=position on
    the demo's training images; returns (model_dir, calibration result, train data)."""
    from grdnet_tf.training import train_lib
    model_dir = str(tmp_path_factory.mktemp("baseline") / "run")
    config = make_tiny_run(model_dir, image_size=(32, 32), overrides={
        "scoring.image_baseline": "position", "data.val_fraction": 0.3})
    data = train_lib.load_train_data(config, demo_category)
    loaded = run_dir.load_for_inference(model_dir)
    lines = []
    result = calibration.calibrate(loaded.model, config, data.val_cache, log_fn=lines.append,
                                   baseline_cache=data.train_cache)
    run_dir.write_calibration(model_dir, result)
    return model_dir, result, data, lines


def test_calibration_stores_the_baseline_and_every_scorer_uses_it(baseline_run, tmp_path):
    model_dir, result, data, lines = baseline_run
    entry = result["image_baseline"]
    assert entry["num_images"] == len(data.train_cache) and entry["image_map"] == "segmentator"
    assert result["image_baseline_source"] == "config"
    assert "per-pixel statistics of the image map over" in lines[1]
    assert "image baseline position (config)" in lines[-1]
    # The JSON names the file and its hash; the arrays are in the file, not in the JSON.
    on_disk = run_dir.read_json(os.path.join(model_dir, run_dir.CALIBRATION_JSON))
    assert set(on_disk["image_baseline"]) >= {"file", "sha256", "shape", "num_images"}
    assert "mean" not in on_disk["image_baseline"]
    assert on_disk["image_baseline"]["shape"] == [32, 32]
    assert os.path.isfile(os.path.join(model_dir, on_disk["image_baseline"]["file"]))
    loaded = run_dir.load_for_inference(model_dir)
    np.testing.assert_array_equal(loaded.calibration["image_baseline"]["mean"], entry["mean"])
    params = scoring.ScoringParams.from_run(loaded.config, loaded.calibration)
    assert params.image_baseline is not None
    # Accumulated batch by batch (3 images a batch here), the statistics equal those of
    # all the training maps at once.
    from grdnet_tf.data import preprocess
    seg, _ = calibration.raw_maps(loaded.model, preprocess.to_unit(data.train_cache.images))
    at_once = scoring.ImageBaseline.from_maps(seg)
    streamed = calibration.image_baselines(loaded.model, loaded.config, data.train_cache,
                                           ("segmentator",), 1.0, batch_size=3)["segmentator"]
    for got in (streamed, params.image_baseline):
        np.testing.assert_allclose(got.mean, at_once.mean, atol=1e-6)
        np.testing.assert_allclose(got.std, at_once.std, atol=1e-5)
    # The threshold's normals scored again by the run's Scorer give the calibrated scores.
    images = preprocess.to_unit(data.val_cache.images)
    ones = list(np.ones(images.shape[:3], np.float32))
    scored = run_scoring.Scorer(loaded).score_batch(list(images), ones)
    np.testing.assert_allclose(scored[keys.ANOMALY_SCORE], result["scores"], atol=1e-5)
    plain = run_scoring.Scorer(loaded, params=dataclasses.replace(
        params, image_baseline=None)).score_batch(list(images), ones)
    assert np.abs(plain[keys.ANOMALY_SCORE] - scored[keys.ANOMALY_SCORE]).max() > 0.1
    np.testing.assert_array_equal(plain[keys.ANOMALY_MAP], scored[keys.ANOMALY_MAP])
    # The SavedModel has the baseline baked in, its metadata records the file and hash.
    version_dir = export_lib.export_model(loaded, str(tmp_path / "export"),
                                          model_dir=model_dir)
    metadata = export_lib.read_metadata(version_dir)
    assert metadata["calibration"]["image_baseline"]["sha256"] == entry["sha256"]
    uint8 = (np.asarray(data.val_cache.images[:2])).astype(np.uint8)
    served = tf.saved_model.load(version_dir).signatures["serving_default"](
        images=tf.constant(uint8))
    in_process = scoring.score_images(loaded.model, uint8, params, loaded.threshold)
    np.testing.assert_allclose(served[keys.ANOMALY_SCORE].numpy(),
                               in_process[keys.ANOMALY_SCORE].numpy(), atol=1e-4)
    # So has the ONNX graph (the edge formats share the serving function).
    from grdnet_tf.serving import edge
    onnx_dir = export_lib.export_model(loaded, str(tmp_path / "onnx"), model_dir=model_dir,
                                       export_format="onnx")
    run = edge.runner("onnx", os.path.join(onnx_dir, edge.FILENAMES["onnx"]))
    np.testing.assert_allclose(run(uint8)[keys.ANOMALY_SCORE],
                               in_process[keys.ANOMALY_SCORE].numpy(), atol=1e-3)


def test_a_missing_or_changed_baseline_file_is_named(baseline_run, tmp_path):
    import shutil
    model_dir = str(tmp_path / "copy")
    shutil.copytree(baseline_run[0], model_dir)
    name = run_dir.read_json(os.path.join(model_dir, run_dir.CALIBRATION_JSON))[
        "image_baseline"]["file"]
    path = os.path.join(model_dir, name)
    with open(path, "ab") as f:
        f.write(b"x")
    with pytest.raises(ValueError, match=f"{name} is not the image baseline"):
        run_dir.load_for_inference(model_dir)
    os.remove(path)
    with pytest.raises(ValueError, match=f"{name} .*is missing"):
        run_dir.read_calibration(model_dir)


def test_position_without_a_calibrated_baseline_asks_for_a_recalibration():
    config = config_lib.with_overrides(load_tiny_config(), {"scoring.image_baseline":
                                                            "position"})
    with pytest.raises(ValueError, match="grdnet-calibrate"):
        scoring.ScoringParams.from_run(config, {"threshold": 0.3})
    auto = config_lib.with_overrides(config, {"scoring.image_baseline": "auto"})
    assert scoring.ScoringParams.from_run(auto, {"threshold": 0.3}).image_baseline is None
    with pytest.raises(ValueError, match="needs the training images"):
        calibration.image_baselines(None, config, None, ("segmentator",), 1.0)
    # Before calibration (the calibration itself, learning curves) there is no baseline.
    assert scoring.ScoringParams.uncalibrated(config).image_baseline is None
    baseline = scoring.ImageBaseline(mean=np.zeros((4, 4)), std=np.ones((4, 4)))
    with pytest.raises(ValueError, match="not working-size maps of patch mode"):
        calibration.image_scores([np.zeros((4, 6), np.float32)], 3, baseline=baseline)


def test_export_reads_the_calibration_and_its_baseline_file_once(baseline_run, tmp_path,
                                                                 monkeypatch):
    """grdnet-export checks the threshold on the calibration it read, then loads the run
    with that same calibration: calibration.json and the .npz are read (and hashed) once."""
    model_dir = baseline_run[0]
    calls = []
    real = run_dir.read_calibration
    monkeypatch.setattr(run_dir, "read_calibration",
                        lambda path: calls.append(path) or real(path))
    version_dir = export_lib.export_run(model_dir, str(tmp_path / "export"))
    assert calls == [os.path.abspath(model_dir)]
    sha = export_lib.read_metadata(version_dir)["calibration"]["image_baseline"]["sha256"]
    assert sha == baseline_run[1]["image_baseline"]["sha256"]
