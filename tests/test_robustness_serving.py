"""The export never serves a broken model and bounds its inputs (issue 14 items 2, 5, 6):
malformed requests get messages saying what the signature expects, a request over the
pixel limit is refused before decoding, CMYK JPEGs are rejected, non-finite or exploded
weights are not exported, --overwrite survives a kill, a concurrent export is named."""
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import zlib

import cv2
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from grdnet_tf import keys, run_dir
from grdnet_tf.serving import export_lib

from helpers_run import REPO_ROOT

MAX_PIXELS = 3 * 32 * 32  # three 32 x 32 images per request


@pytest.fixture(scope="module")
def exported(random_run, tmp_path_factory):
    """(the session's tiny run (conftest.random_run), export base, its export with
    max_pixels=MAX_PIXELS)."""
    base = str(tmp_path_factory.mktemp("serving") / "export")
    version_dir = export_lib.export_run(random_run, base, max_pixels=MAX_PIXELS)
    return random_run, base, version_dir


@pytest.fixture(scope="module")
def signatures(exported):
    return tf.saved_model.load(exported[2]).signatures


def _png(image):
    return cv2.imencode(".png", image)[1].tobytes()


def _png_claiming(height, width):
    """A valid 32 x 32 PNG whose IHDR claims height x width (CRC fixed)."""
    data = bytearray(_png(np.zeros((32, 32, 3), np.uint8)))
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


def _cmyk_jpeg(tmp_path):
    path = str(tmp_path / "cmyk.jpg")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (32, 32, 4), dtype=np.uint8), "CMYK").save(path)
    return path


def _call(signatures, name, **inputs):
    return signatures[name](**{k: tf.constant(v) for k, v in inputs.items()})


def test_malformed_inputs_say_what_the_signature_expects(signatures, tmp_path):
    image = np.full((1, 32, 32, 3), 128, np.uint8)
    with open(_cmyk_jpeg(tmp_path), "rb") as f:
        cmyk = f.read()
    cases = {
        "gray": ("serving_default", dict(images=np.zeros((1, 32, 32, 1), np.uint8)),
                 r"serving_default: images must be uint8 \[batch >= 1, height, width, 3\].*"
                 r"\[1 32 32 1\]"),
        "rgba": ("serving_default", dict(images=np.zeros((1, 32, 32, 4), np.uint8)),
                 r"images must be uint8 \[batch >= 1.*\[1 32 32 4\]"),
        "empty": ("serving_default", dict(images=np.zeros((0, 32, 32, 3), np.uint8)),
                  r"batch >= 1.*\[0 32 32 3\]"),
        "empty_roi": ("serve_roi", dict(images=np.zeros((0, 32, 32, 3), np.uint8),
                                        roi=np.zeros((0, 32, 32), np.uint8)),
                      r"serve_roi: images must be uint8 \[batch >= 1"),
        "roi_rank4": ("serve_roi", dict(images=image, roi=np.ones((1, 32, 32, 1), np.uint8)),
                      r"serve_roi: roi must be uint8 \[batch, height, width\].*\[1 32 32 1\]"),
        "bytes_rank2": ("serve_bytes", dict(image_bytes=[[_png(image[0])]]),
                        r"image_bytes must be a string vector \[batch >= 1\].*\[1 1\]"),
        "bmp_garbage": ("serve_bytes", dict(image_bytes=[b"BM" + bytes(range(256)) * 2]),
                        r"image_bytes\[0\] \(514 bytes\) is a corrupt or truncated BMP"),
        "cmyk": ("serve_bytes", dict(image_bytes=[cmyk]),
                 r"image_bytes\[0\] .* is a CMYK JPEG: convert it to RGB"),
    }
    for name, (signature, inputs, message) in cases.items():
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            _call(signatures, signature, **inputs)
    # The process is still fine.
    out = _call(signatures, "serve_roi", images=image, roi=np.ones((1, 32, 32), np.uint8))
    assert np.isfinite(out[keys.ANOMALY_SCORE].numpy()).all()


def test_requests_over_the_pixel_limit_are_refused_before_decoding(signatures, exported):
    assert export_lib.read_metadata(exported[2])["max_pixels"] == MAX_PIXELS
    limit = r"exceeds the export limit of max_pixels=3072 decoded pixels per request"
    # 20000 x 20000 claimed by a 32 x 32 file: refused from its header, not decoded.
    with pytest.raises(tf.errors.InvalidArgumentError, match=limit + r".*400000000"):
        _call(signatures, "serve_bytes", image_bytes=[_png_claiming(20000, 20000)])
    four = np.zeros((4, 32, 32, 3), np.uint8)
    with pytest.raises(tf.errors.InvalidArgumentError, match=limit + r".*4096"):
        _call(signatures, "serve_bytes", image_bytes=[_png(im) for im in four])
    with pytest.raises(tf.errors.InvalidArgumentError, match="serving_default: images .*"
                                                             + limit):
        _call(signatures, "serving_default", images=four)
    out = _call(signatures, "serve_bytes", image_bytes=[_png(im) for im in four[:3]])
    assert out[keys.ANOMALY_MAP].shape == (3, 32, 32)
    with pytest.raises(ValueError, match="--max_pixels=0 must be a positive integer"):
        export_lib.export_run(exported[0], str(os.path.dirname(exported[1])) + "/x",
                              max_pixels=0)


def test_grdnet_predict_rejects_cmyk_too(tmp_path):
    from grdnet_tf.data import io
    with pytest.raises(io.ImageReadError, match="cmyk.jpg: it is a CMYK JPEG"):
        io.read_image(_cmyk_jpeg(tmp_path))


@pytest.mark.parametrize("value, message", [
    (np.nan, "holds non-finite weights"),
    # Finite weights of +-3e38 overflow to inf - inf: NaN scores, is_anomalous False.
    (3e38, "non-finite anomaly score"),
])
def test_non_finite_models_are_not_exported(exported, tmp_path, value, message):
    loaded = run_dir.load_for_inference(exported[0])
    signs = np.random.default_rng(0)
    for variable in loaded.model.segmentator.variables:
        if "kernel" in variable.path:
            variable.assign(value * signs.choice([-1.0, 1.0], variable.shape))
    base = str(tmp_path / "export")
    with pytest.raises(ValueError, match=message):
        export_lib.export_model(loaded, base, model_dir=exported[0])
    assert not os.path.exists(base) or os.listdir(base) == []


def _digest(directory):
    with open(os.path.join(directory, export_lib.METADATA_DIR, export_lib.METADATA_JSON)) as f:
        return json.load(f)["created_utc"]


# --overwrite of version 1, SIGKILLed right after the old version was moved aside.
KILL_OVERWRITE = r'''
import os, signal, sys
from grdnet_tf.serving import export_lib
model_dir, base = sys.argv[1:3]
real_rename = os.rename
def rename(src, dst):
    real_rename(src, dst)
    if os.path.basename(dst).startswith(export_lib.OLD_PREFIX):
        os.kill(os.getpid(), signal.SIGKILL)
os.rename = rename
export_lib.export_run(model_dir, base, version=1, overwrite=True)
'''


def test_overwrite_killed_midway_keeps_a_version(exported, tmp_path):
    model_dir, _, version_dir = exported
    base = str(tmp_path / "export")
    shutil.copytree(version_dir, os.path.join(base, "1"))
    before = _digest(os.path.join(base, "1"))
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", KILL_OVERWRITE, model_dir, base], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    # Version 1 is the new export (one atomic exchange), never missing.
    assert os.path.isfile(os.path.join(base, "1", "saved_model.pb"))
    assert _digest(os.path.join(base, "1")) != before
    export_lib.repair_interrupted_overwrite(base)
    assert sorted(os.listdir(base)) == ["1"]


def test_two_rename_overwrite_is_repaired(exported, tmp_path):
    """Where no atomic exchange exists, a kill between the two renames leaves only
    .old-1-*: the next export puts it back before anything else."""
    base = str(tmp_path / "export")
    os.makedirs(base)
    shutil.copytree(exported[2], os.path.join(base, ".old-1-deadbeef"))
    messages = []
    export_lib.repair_interrupted_overwrite(base, log_fn=messages.append)
    assert sorted(os.listdir(base)) == ["1"] and "interrupted --overwrite" in messages[0]
    assert _digest(os.path.join(base, "1")) == _digest(exported[2])


def test_concurrent_export_is_named_not_sent_to_overwrite(exported, tmp_path, monkeypatch):
    base = str(tmp_path / "export")
    os.makedirs(base)
    loaded = run_dir.load_for_inference(exported[0])
    fd = os.open(base, os.O_RDONLY)  # another export holds the directory
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(FileExistsError, match="another export is writing to") as e:
            export_lib.export_model(loaded, base, model_dir=exported[0])
        assert "--overwrite" not in str(e.value)
    finally:
        os.close(fd)
    assert os.listdir(base) == []
