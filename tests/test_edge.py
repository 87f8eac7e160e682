"""ONNX and LiteRT exports (grdnet_tf/serving/edge.py), served equals scored in patch mode,
defect masks and the normalised score, and the modes of what an export writes.

Two tiny runs (whole image: the session's conftest.random_export; patch mode), each exported
once per format (module fixtures).
The same images go through the SavedModel, onnxruntime and the LiteRT interpreter: scores
agree within 1e-3 and maps within 1e-2 (the issue's bar; measured: ~1e-7).
"""
import os
import types

import cv2
import numpy as np
import pytest
import tensorflow as tf

from grdnet_tf import keys, run_dir, scoring
from grdnet_tf.evaluation import eval_lib
from grdnet_tf.serving import edge, export_lib

from helpers_run import make_tiny_run

SCORE_ATOL = 1e-3
MAP_ATOL = 1e-2
PATCH = {"data.patch_scale": 1.0, "data.patch_stride": 16}
SIZE = (48, 40)   # the LiteRT export's fixed input; ONNX and SavedModel take any size


def _images(count, size, seed):
    """Smooth random uint8 RGB images [count, h, w, 3]."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((count, 6, 5, 3), dtype=np.float32)
    fine = tf.image.resize(coarse, size, method="bicubic").numpy()
    fine += rng.normal(0.0, 0.05, fine.shape)
    return np.clip(np.rint(fine * 255.0), 0, 255).astype(np.uint8)


def _export(loaded, base, model_dir, **kwargs):
    return export_lib.export_model(loaded, base, model_dir=model_dir, **kwargs)


@pytest.fixture(scope="module")
def whole(random_export, tmp_path_factory):
    """The session's tiny run (threshold 0.5) and its SavedModel (conftest.random_export),
    exported here to ONNX and LiteRT in an export base of this module."""
    root = tmp_path_factory.mktemp("edge")
    loaded, model_dir = random_export.loaded, random_export.model_dir
    base = str(root / "exported")
    dirs = {"saved_model": random_export.version_dir,
            "onnx": _export(loaded, base, model_dir, export_format="onnx"),
            "litert": _export(loaded, base, model_dir, export_format="litert",
                              input_size=SIZE)}
    return types.SimpleNamespace(root=root, model_dir=model_dir, loaded=loaded, dirs=dirs,
                                 base=base)


def _saved_model_outputs(version_dir, images):
    signature = tf.saved_model.load(version_dir).signatures["serving_default"]
    return {k: v.numpy() for k, v in signature(images=tf.constant(images)).items()}


def _edge_outputs(whole, export_format, images):
    path = os.path.join(whole.dirs[export_format], edge.FILENAMES[export_format])
    run = edge.runner(export_format, path)
    if export_format == "onnx":
        return run(images)
    outs = [run(image[None]) for image in images]   # LiteRT: batch 1
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


def _assert_parity(got, want, pixel_threshold, threshold):
    assert set(got) == set(export_lib.OUTPUTS) == set(want)
    np.testing.assert_allclose(got[keys.ANOMALY_SCORE], want[keys.ANOMALY_SCORE],
                               atol=SCORE_ATOL)
    np.testing.assert_allclose(got[keys.NORMALIZED_SCORE], want[keys.NORMALIZED_SCORE],
                               atol=SCORE_ATOL)
    np.testing.assert_allclose(got[keys.ANOMALY_MAP], want[keys.ANOMALY_MAP], atol=MAP_ATOL)
    clear = np.abs(want[keys.ANOMALY_MAP] - pixel_threshold) > MAP_ATOL
    np.testing.assert_array_equal(got[keys.ANOMALY_MASK][clear],
                                  want[keys.ANOMALY_MASK][clear])
    clear = np.abs(want[keys.ANOMALY_SCORE] - threshold) > SCORE_ATOL
    np.testing.assert_array_equal(got[keys.IS_ANOMALOUS][clear],
                                  want[keys.IS_ANOMALOUS][clear])
    diff = np.abs(got[keys.RECONSTRUCTION].astype(int) - want[keys.RECONSTRUCTION].astype(int))
    assert diff.max() <= 3


@pytest.mark.parametrize("export_format", ["onnx", "litert"])
def test_edge_formats_equal_the_saved_model(whole, export_format):
    images = _images(3, SIZE, seed=1)
    want = _saved_model_outputs(whole.dirs["saved_model"], images)
    got = _edge_outputs(whole, export_format, images)
    _assert_parity(got, want, scoring.DEFAULT_PIXEL_THRESHOLD, 0.5)
    # Not a vacuous comparison: the map is not flat and the images score differently.
    assert np.ptp(want[keys.ANOMALY_MAP]) > 0.01
    assert np.ptp(want[keys.ANOMALY_SCORE]) > 1e-4


def test_onnx_takes_any_size(whole):
    images = _images(2, (64, 64), seed=2)
    want = _saved_model_outputs(whole.dirs["saved_model"], images)
    got = _edge_outputs(whole, "onnx", images)
    _assert_parity(got, want, scoring.DEFAULT_PIXEL_THRESHOLD, 0.5)
    assert got[keys.ANOMALY_MAP].shape == (2, 64, 64)


def test_edge_metadata_and_litert_signature(whole):
    meta = export_lib.read_metadata(whole.dirs["litert"])
    assert meta["format"] == "grdnet_tf.litert/1"
    assert meta["file"] == "model.tflite" and meta["input_size"] == list(SIZE)
    assert meta["pixel_threshold"] == scoring.DEFAULT_PIXEL_THRESHOLD
    assert meta["pixel_threshold_source"] == "default"
    assert meta["outputs"] == list(export_lib.OUTPUTS)
    assert export_lib.read_metadata(whole.dirs["onnx"])["input_size"] is None
    runner = edge.runner("litert", os.path.join(whole.dirs["litert"], "model.tflite"))
    with pytest.raises(ValueError, match=r"takes uint8 \[1, 48, 40, 3\] images"):
        runner(_images(1, (32, 32), seed=3))


def test_litert_int8_quantisation_runs(whole, tmp_path):
    path = str(tmp_path / "int8.tflite")
    params = scoring.ScoringParams.from_run(whole.loaded.config, whole.loaded.calibration)
    decision = scoring.Decision(0.5)
    edge.write_litert(whole.loaded.model, params, decision, path, SIZE,
                      representative=_images(4, SIZE, seed=4))
    float_size = os.path.getsize(os.path.join(whole.dirs["litert"], "model.tflite"))
    assert os.path.getsize(path) < float_size    # int8 weights
    image = _images(1, SIZE, seed=5)
    out = edge.runner("litert", path)(image)
    want = _saved_model_outputs(whole.dirs["saved_model"], image)
    assert out[keys.ANOMALY_MAP].shape == want[keys.ANOMALY_MAP].shape
    assert np.all(np.isfinite(out[keys.ANOMALY_MAP]))
    # int8 is an approximation (its AUROC on real data is in bench/results/serving.json)
    assert abs(float(out[keys.ANOMALY_SCORE][0]) - float(want[keys.ANOMALY_SCORE][0])) < 0.1


def test_pixel_threshold_flag_sets_the_mask(whole):
    version_dir = _export(whole.loaded, whole.base, whole.model_dir, pixel_threshold=0.3)
    images = _images(2, SIZE, seed=6)
    out = _saved_model_outputs(version_dir, images)
    np.testing.assert_array_equal(out[keys.ANOMALY_MASK],
                                  (out[keys.ANOMALY_MAP] > 0.3).astype(np.uint8))
    assert 0 < out[keys.ANOMALY_MASK].mean() < 1
    assert export_lib.read_metadata(version_dir)["pixel_threshold_source"] == "flag"
    with pytest.raises(ValueError, match="--pixel_threshold=1.5"):
        _export(whole.loaded, whole.base, whole.model_dir, pixel_threshold=1.5)


def test_bad_format_and_input_size_write_nothing(whole, tmp_path):
    base = str(tmp_path / "none")
    with pytest.raises(ValueError, match="--format=tflite must be one of"):
        export_lib.export_run(whole.model_dir, base, export_format="tflite")
    with pytest.raises(ValueError, match="--input_size=0,4"):
        export_lib.export_run(whole.model_dir, base, export_format="litert",
                              input_size=(0, 4))
    with pytest.raises(ValueError, match="--input_size applies to --format=onnx|litert"):
        export_lib.export_run(whole.model_dir, base, input_size=(32, 32))
    assert not os.path.exists(base)


def test_roi_template_is_baked_into_every_format(whole, tmp_path):
    """--roi: the SavedModel's serving_default, ONNX and LiteRT all score images with the
    template as score_images(roi=template) does; serve_roi takes the request's ROI instead;
    a LiteRT export takes the template's size; bad templates and sizes write nothing."""
    template = np.zeros((96, 80), np.uint8)
    template[10:70, 8:50] = 255
    path = str(tmp_path / "template.png")
    cv2.imwrite(path, template)
    base = str(tmp_path / "exported")
    dirs = {name: _export(whole.loaded, base, whole.model_dir, export_format=name, roi=path)
            for name in ("saved_model", "onnx", "litert")}
    images = _images(2, (96, 80), seed=7)
    params = scoring.ScoringParams.from_run(whole.loaded.config, whole.loaded.calibration)
    roi = np.repeat((template > 0)[None].astype(np.float32), 2, axis=0)
    want = {k: v.numpy() for k, v in export_lib.outputs_of(
        whole.loaded.model, params, scoring.Decision(0.5), tf.constant(images), roi).items()}
    plain = _saved_model_outputs(whole.dirs["saved_model"], images)
    assert np.abs(plain[keys.ANOMALY_SCORE] - want[keys.ANOMALY_SCORE]).max() > 1e-4
    assert not want[keys.ANOMALY_MAP][:, 90:].any()     # beyond the window of the template
    served = tf.saved_model.load(dirs["saved_model"]).signatures
    for name, version_dir in dirs.items():
        got = ({k: v.numpy() for k, v in served["serving_default"](
                   images=tf.constant(images)).items()} if name == "saved_model" else
               _edge_outputs(types.SimpleNamespace(dirs={name: version_dir}), name, images))
        _assert_parity(got, want, scoring.DEFAULT_PIXEL_THRESHOLD, 0.5)
        meta = export_lib.read_metadata(version_dir)["roi_template"]
        assert meta["size"] == [96, 80] and meta["coverage"] == pytest.approx(60 * 42 / 7680)
        assert meta["file"] == path and len(meta["sha256"]) == 64
    assert export_lib.read_metadata(dirs["litert"])["input_size"] == [96, 80]
    assert export_lib.read_metadata(whole.dirs["saved_model"])["roi_template"] is None
    everywhere = served["serve_roi"](images=tf.constant(images),
                                     roi=tf.ones((2, 96, 80), tf.uint8))
    np.testing.assert_allclose(everywhere[keys.ANOMALY_SCORE].numpy(),
                               plain[keys.ANOMALY_SCORE], atol=1e-6)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"96x80 ROI template .* must have its aspect ratio"):
        served["serving_default"](images=tf.constant(_images(1, (64, 64), seed=8)))
    other = str(tmp_path / "other")
    with pytest.raises(ValueError, match=r"--input_size=48,48 has another aspect ratio than "
                                         r"the --roi template \(96x80\)"):
        export_lib.export_run(whole.model_dir, other, export_format="litert",
                              input_size=(48, 48), roi=path)
    black = str(tmp_path / "black.png")
    cv2.imwrite(black, np.zeros((96, 80), np.uint8))
    with pytest.raises(ValueError, match=r"--roi=.*black.png covers no pixel"):
        export_lib.export_run(whole.model_dir, other, roi=black)
    with pytest.raises(ValueError, match="missing.png"):
        export_lib.export_run(whole.model_dir, other, roi=str(tmp_path / "missing.png"))
    assert not os.path.exists(other)


# The binary's --format/--input_size error: test_export.py's
# test_binary_rejects_a_bad_input_size, a subprocess run with that module's other binary runs.


# --- patch mode: served equals scored ------------------------------------------------


@pytest.fixture(scope="module")
def patch(tmp_path_factory):
    root = tmp_path_factory.mktemp("edge_patch")
    model_dir = str(root / "run")
    make_tiny_run(model_dir, threshold=0.5, overrides=PATCH)
    loaded = run_dir.load_for_inference(model_dir)
    base = str(root / "exported")
    dirs = {"saved_model": _export(loaded, base, model_dir),
            "onnx": _export(loaded, base, model_dir, export_format="onnx")}
    return types.SimpleNamespace(root=root, model_dir=model_dir, loaded=loaded, dirs=dirs,
                                 base=base)


def test_patch_mode_export_equals_grdnet_predict(patch, tmp_path):
    """Issue #13 item 4: the exported model tiles as grdnet-predict does (same score)."""
    images = _images(2, (80, 72), seed=7)
    folder = tmp_path / "in"
    folder.mkdir()
    for i, image in enumerate(images):
        cv2.imwrite(str(folder / f"{i}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    eval_lib.predict(patch.model_dir, str(folder), str(tmp_path / "out"), overlays=False,
                     log_fn=lambda *_: None)
    with open(tmp_path / "out" / "predictions.csv", encoding="utf-8") as f:
        rows = f.read().splitlines()[1:]
    predicted = np.array([float(r.split(",")[1]) for r in rows])
    served = np.concatenate([_saved_model_outputs(patch.dirs["saved_model"], image[None])[
        keys.ANOMALY_SCORE] for image in images])
    np.testing.assert_allclose(served, predicted, atol=1e-5)   # the CSV has 6 decimals
    meta = export_lib.read_metadata(patch.dirs["saved_model"])
    assert (meta["patch_scale"], meta["patch_stride"]) == (1.0, 16)
    # Tiling is what makes the difference: whole-image scoring of the same model differs.
    params = scoring.ScoringParams.from_run(patch.loaded.config, patch.loaded.calibration)
    untiled = scoring.score_images(patch.loaded.model, images,
                                   scoring.ScoringParams(params.image_size, params.channels,
                                                         params.kernel), 0.5)
    assert np.abs(untiled[keys.ANOMALY_SCORE].numpy() - served).max() > 1e-3


def test_patch_mode_onnx_equals_the_saved_model(patch):
    images = _images(2, (80, 72), seed=8)
    want = _saved_model_outputs(patch.dirs["saved_model"], images)
    got = _edge_outputs(patch, "onnx", images)
    _assert_parity(got, want, scoring.DEFAULT_PIXEL_THRESHOLD, 0.5)


def test_patch_mode_litert_is_refused(patch, tmp_path):
    base = str(tmp_path / "lite")
    with pytest.raises(ValueError, match="patch mode .* does not convert to LiteRT"):
        export_lib.export_run(patch.model_dir, base, export_format="litert")
    assert not os.path.exists(base)


# --- file modes ----------------------------------------------------------------------


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755),
                                                       (0o027, 0o640, 0o750)])
def test_export_and_pngs_follow_the_umask(whole, tmp_path, mask, file_mode, dir_mode):
    from grdnet_tf.evaluation import plots

    old = os.umask(mask)
    try:
        png = str(tmp_path / "a.png")
        plots.save_png(png, np.zeros((4, 4, 3), np.uint8))
        version_dir = _export(whole.loaded, str(tmp_path / "exp"), whole.model_dir,
                              export_format="onnx")
    finally:
        os.umask(old)
    assert os.stat(png).st_mode & 0o777 == file_mode
    assert os.stat(version_dir).st_mode & 0o777 == dir_mode
    for root, dirs, files in os.walk(version_dir):
        for name in dirs:
            assert os.stat(os.path.join(root, name)).st_mode & 0o777 == dir_mode, name
        for name in files:
            assert os.stat(os.path.join(root, name)).st_mode & 0o777 == file_mode, name
