"""Export a trained run as a versioned SavedModel for TensorFlow Serving.

    export_run(model_dir, export_dir) -> "<export_dir>/<N>"

Layout written (TF Serving's model base path convention):

  <export_dir>/<N>/saved_model.pb, variables/     inference graph only: generator encoder
                                                  + decoder (GRDNet.call ->
                                                  generator.reconstruct) and segmentator;
                                                  no discriminator, no second encoder
  <export_dir>/<N>/assets.extra/grdnet.json       metadata (threshold, sizes, smoothing,
                                                  source checkpoint, config); TF Serving
                                                  ignores assets.extra

N defaults to one more than the largest integer version in <export_dir> (1 when empty).
The version is written into ``<export_dir>/.tmp-<N>-<random>`` and renamed into place, so a
server polling <export_dir> never sees a half-written version (names that are not integers
are ignored by TF Serving). An existing version is replaced only with ``overwrite=True``.

Signatures (every input dimension except channels is None: any batch, any size):

  serving_default  images uint8 [B, h, w, 3]
  serve_bytes      image_bytes string [B]: encoded PNG / JPEG / BMP, one size per batch
  serve_roi        images uint8 [B, h, w, 3], roi uint8 [B, h, w] (nonzero = inside)

  outputs          anomaly_score float32 [B], anomaly_map float32 [B, h, w] in [0, 1],
                   is_anomalous bool [B] (score > threshold), reconstruction uint8
                   [B, h, w, 3], anomaly_mask uint8 [B, h, w] in {0, 1} (map > pixel
                   threshold), normalized_score float32 [B] in [0, 1] (threshold at 0.5);
                   serve_bytes adds heatmap_png_bytes string [B] (the map in
                   ``heatmap.JET_LUT`` colours blended on the image, alpha 0.5, PNG).

All scoring is ``grdnet_tf.scoring.score_images``: the exported outputs equal the in-process
ones.
"""
import ctypes
import datetime
import errno
import fcntl
import hashlib
import json
import math
import os
import shutil
import tempfile
import uuid

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from grdnet_tf import config as config_lib
from grdnet_tf import choices, file_modes, heatmap, keys, run_dir, scoring
from grdnet_tf.data import io

METADATA_DIR = "assets.extra"          # TF Serving convention: not read by the server
METADATA_JSON = "grdnet.json"
TMP_PREFIX = ".tmp-"                   # <export_dir>/.tmp-<N>-<random> while writing
OLD_PREFIX = ".old-"                   # a replaced version, deleted after the swap
HEATMAP_ALPHA = heatmap.ALPHA          # as plots.overlay
HEATMAP_PNG_BYTES = "heatmap_png_bytes"
SIGNATURES = ("serving_default", "serve_bytes", "serve_roi")
EXPORT_FORMATS = ("saved_model", "onnx", "litert")
# Leading bytes of the formats serve_bytes accepts (what tf.io.decode_image sniffs too).
IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM")

OUTPUTS = (keys.ANOMALY_SCORE, keys.ANOMALY_MAP, keys.IS_ANOMALOUS, keys.RECONSTRUCTION,
           keys.ANOMALY_MASK, keys.NORMALIZED_SCORE)
# Decoded pixels (height x width, summed over the batch) one request may hold, unless the
# export sets another limit (grdnet-export --max_pixels): 2**24 = e.g. 16 images of
# 1024 x 1024. An 8000 x 8000 PNG of 197 KB would otherwise take 24 s and 3.2 GB.
DEFAULT_MAX_PIXELS = 2 ** 24
BMP_BITS_PER_PIXEL = (8, 24, 32)  # what tf.io.decode_bmp reads (gray, RGB, RGBA)

IMAGES_SPEC = tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")
IMAGE_BYTES_SPEC = tf.TensorSpec([None], tf.string, name="image_bytes")
ROI_SPEC = tf.TensorSpec([None, None, None], tf.uint8, name="roi")


def to_uint8_rgb(images):
    """float [B, h, w, 1|3] in [0, 1] -> uint8 RGB [B, h, w, 3] (round half to even)."""
    images = tf.cast(tf.round(tf.clip_by_value(images, 0.0, 1.0) * 255.0), tf.uint8)
    if images.shape[-1] == 1:
        images = tf.image.grayscale_to_rgb(images)
    return images


def colorize(anomaly_map):
    """TF twin of ``heatmap.colorize``: float [..., h, w] -> uint8 [..., h, w, 3] via JET_LUT."""
    anomaly_map = tf.where(tf.math.is_nan(anomaly_map), tf.zeros_like(anomaly_map),
                           anomaly_map)
    index = tf.cast(tf.round(tf.clip_by_value(anomaly_map, 0.0, 1.0) * 255.0), tf.int32)
    return tf.gather(tf.constant(heatmap.JET_LUT), index)


def heatmap_overlay(images, anomaly_map, alpha=HEATMAP_ALPHA):
    """TF twin of ``plots.overlay`` without contour: uint8 [B, h, w, 3] and [B, h, w] -> uint8."""
    blend = ((1.0 - alpha) * tf.cast(images, tf.float32)
             + alpha * tf.cast(colorize(anomaly_map), tf.float32))
    return tf.cast(tf.clip_by_value(tf.round(blend), 0.0, 255.0), tf.uint8)


# Input validation of the signatures. A SavedModel's signature does not enforce its input
# shapes (TF Serving and tf.saved_model.load feed any shape), and the graph was traced with
# the static shapes of the specs, so every check reads the runtime shape through
# `_runtime_shape`: Grappler cannot fold it into the traced constants.

def _runtime_shape(tensor):
    """tf.shape(tensor) as the kernel sees it, hidden from graph-time constant folding."""
    return tf.io.parse_tensor(tf.io.serialize_tensor(tf.shape(tensor)), tf.int32)


def _checked(tensor, checks):
    """`tensor` after the assertions `checks` have passed."""
    with tf.control_dependencies(checks):
        return tf.identity(tensor)


def _pixel_limit_check(pixels, max_pixels, what):
    return tf.debugging.Assert(
        pixels <= max_pixels,
        [f"{what} exceeds the export limit of max_pixels={max_pixels} decoded pixels per "
         f"request (grdnet-export --max_pixels, export/README.md); send fewer or smaller "
         f"images. Pixels (height x width, summed over the batch):", pixels])


def check_images(images, max_pixels, signature, name="images"):
    """uint8 [B, h, w, 3] with B >= 1, h, w >= 1 and at most `max_pixels` pixels in all."""
    shape = _runtime_shape(images)
    rank = tf.size(shape)
    expects = (f"{signature}: {name} must be uint8 [batch >= 1, height, width, 3] (RGB; "
               f"convert gray or RGBA images first); got shape")
    padded = tf.concat([shape, tf.zeros([4], tf.int32)], 0)  # indexable at any rank
    valid = tf.logical_and(tf.equal(rank, 4), tf.equal(padded[3], 3))
    checks = [tf.debugging.Assert(valid, [expects, shape], summarize=8)]
    with tf.control_dependencies(checks):
        sizes = tf.identity(padded[:3])
    checks += [
        tf.debugging.Assert(tf.reduce_all(sizes > 0), [expects, shape], summarize=8),
        _pixel_limit_check(tf.reduce_prod(tf.cast(sizes, tf.int64)), max_pixels,
                           f"{signature}: {name}")]
    return _checked(images, checks)


def check_roi(roi, images):
    """serve_roi's roi: uint8 [B, h, w] matching images [B, h, w, 3]."""
    shape, image_shape = _runtime_shape(roi), _runtime_shape(images)
    same = tf.logical_and(tf.equal(tf.size(shape), 3),
                          tf.reduce_all(tf.equal(tf.concat([shape, [0, 0, 0]], 0)[:3],
                                                 image_shape[:3])))
    return _checked(roi, [tf.debugging.Assert(
        same, ["serve_roi: roi must be uint8 [batch, height, width] (nonzero = inside) "
               "matching images [batch, height, width, 3]; got roi shape", shape,
               "images shape", image_shape], summarize=8)])


def read_roi_template(path):
    """An ROI template file (a fixed camera's mask, white = inspect) -> float32 [h, w] in
    {0, 1}, baked into an export by `template_roi`.

    Raises:
      io.ImageReadError (a ValueError): the file is missing or not an image.
      ValueError: the mask covers no pixel (every image would score 0).
    """
    mask = io.read_mask(path).astype(np.float32)
    if not mask.any():
        raise ValueError(f"--roi={path} covers no pixel (all black): every image would "
                         f"score 0; white marks the region to inspect")
    return mask


def template_roi(template, images, check=True):
    """The ROI of `images` [B, h, w, 3] from a baked template (float32 [th, tw]): the
    template tiled over the batch at its own resolution (`scoring.score_images` maps it
    onto the model grid with nearest neighbour, as it does a request's ROI).

    `check`: an InvalidArgument error when the images' aspect ratio differs from the
    template's by more than 1 % (as for ROI files, `io.MaskNotes`): a stretched template
    would mask the wrong pixels. The edge formats (no assertion ops) check their fixed
    input size when exported instead (`check_template_size`).
    """
    th, tw = (int(v) for v in template.shape)
    shape = tf.shape(images)
    # uint8 in the graph: a camera-size mask costs one byte per pixel in the export.
    constant = tf.constant(np.asarray(template > 0, np.uint8))
    roi = tf.tile(constant[tf.newaxis], tf.stack([shape[0], 1, 1]))
    if not check:
        return roi
    runtime = tf.cast(_runtime_shape(images), tf.float64)
    ratio = (runtime[1] / runtime[2]) / (th / tw)
    return _checked(roi, [tf.debugging.Assert(
        tf.abs(ratio - 1.0) <= io.ASPECT_TOLERANCE,
        [f"this export masks images with a {th}x{tw} ROI template (grdnet-export --roi): "
         f"images must have its aspect ratio (within 1 %); got images shape",
         _runtime_shape(images)], summarize=8)])


def check_template_size(template, input_size):
    """ValueError when a fixed edge input size (h, w) has another aspect ratio than the
    ROI template (float32 [th, tw]); None input size: nothing to check."""
    if template is None or input_size is None:
        return
    (th, tw), (h, w) = template.shape, input_size
    if io.aspect_ratios_differ(input_size, template.shape):
        raise ValueError(f"--input_size={h},{w} has another aspect ratio than the --roi "
                         f"template ({th}x{tw}); pass an input size of the camera's images")


def check_image_bytes(image_bytes):
    """serve_bytes' image_bytes: a string vector [B >= 1] of encoded images."""
    shape = _runtime_shape(image_bytes)
    valid = tf.logical_and(tf.equal(tf.size(shape), 1), tf.reduce_prod(shape) > 0)
    return _checked(image_bytes, [tf.debugging.Assert(
        valid, ["serve_bytes: image_bytes must be a string vector [batch >= 1] holding at "
                "least one encoded PNG, JPEG or BMP image, one per element; got shape",
                shape],
        summarize=8)])


def _little_endian(data, start, length):
    raw = tf.cast(tf.io.decode_raw(tf.strings.substr(data, start, length), tf.uint8),
                  tf.int64)
    return tf.reduce_sum(raw * tf.constant([256 ** i for i in range(length)], tf.int64))


def _big_endian(data, start, length):
    raw = tf.cast(tf.io.decode_raw(tf.strings.substr(data, start, length), tf.uint8),
                  tf.int64)
    return tf.reduce_sum(raw * tf.constant([256 ** i for i in range(length)][::-1],
                                           tf.int64))


def _signed32(value):
    return tf.where(value >= 2 ** 31, value - 2 ** 32, value)


def encoded_image_size(data, index):
    """(height, width) int64 read from the header of one PNG, JPEG or BMP string, without
    decoding it; InvalidArgumentError naming image_bytes[index] for an unknown format, a
    header too short to hold a size, a CMYK JPEG or a BMP header with impossible fields."""
    length = tf.cast(tf.strings.length(data), tf.int64)
    is_png = tf.equal(tf.strings.substr(data, 0, 8), IMAGE_MAGIC[0])
    is_jpeg = tf.equal(tf.strings.substr(data, 0, 3), IMAGE_MAGIC[1])
    is_bmp = tf.equal(tf.strings.substr(data, 0, 2), IMAGE_MAGIC[2])
    name = tf.strings.format("image_bytes[{}] ({} bytes)", (index, length))
    checks = [tf.debugging.Assert(tf.reduce_any([is_png, is_jpeg, is_bmp]), [
        tf.strings.join([name, " is not a PNG, JPEG or BMP image"])])]
    with tf.control_dependencies(checks):
        data = tf.identity(data)

    def png():
        check = tf.debugging.Assert(length >= 24, [tf.strings.join(
            [name, " is a truncated PNG (no IHDR header)"])])
        with tf.control_dependencies([check]):
            return tf.stack([_big_endian(data, 20, 4), _big_endian(data, 16, 4)])

    def jpeg():
        shape = tf.io.extract_jpeg_shape(data, output_type=tf.int64)
        check = tf.debugging.Assert(shape[2] != 4, [tf.strings.join(
            [name, " is a CMYK JPEG: convert it to RGB first (CMYK is not decoded the "
                   "same way everywhere, grdnet-predict rejects it too)"])])
        with tf.control_dependencies([check]):
            return tf.identity(shape[:2])

    def bmp():
        short = tf.debugging.Assert(length >= 30, [tf.strings.join(
            [name, " is a truncated BMP (no complete header)"])])
        with tf.control_dependencies([short]):
            offset, header = _little_endian(data, 10, 4), _little_endian(data, 14, 4)
            width = _signed32(_little_endian(data, 18, 4))
            height = tf.abs(_signed32(_little_endian(data, 22, 4)))
            bits = _little_endian(data, 28, 2)
        row = (width * bits + 31) // 32 * 4
        sane = tf.reduce_all([
            header >= 12, width > 0, height > 0,
            tf.reduce_any(tf.equal(bits, tf.constant(BMP_BITS_PER_PIXEL, tf.int64))),
            offset >= 14 + header, offset + row * height <= length])
        check = tf.debugging.Assert(sane, [tf.strings.join(
            [name, " is a corrupt or truncated BMP: its header (width, height, bits per "
                   "pixel, pixel offset, file length) is"]),
            width, height, bits, offset, length])
        with tf.control_dependencies([check]):
            return tf.stack([height, width])

    return tf.case([(is_png, png), (is_jpeg, jpeg)], default=bmp, exclusive=False)


def check_encoded_sizes(image_bytes, max_pixels):
    """Reads every header of a serve_bytes request and fails before any decoding when the
    images together exceed `max_pixels`."""
    batch = tf.shape(image_bytes)[0]
    sizes = tf.map_fn(lambda args: encoded_image_size(*args),
                      (image_bytes, tf.range(batch)),
                      fn_output_signature=tf.TensorSpec([2], tf.int64))
    pixels = tf.reduce_sum(sizes[:, 0] * sizes[:, 1])
    return _checked(image_bytes, [_pixel_limit_check(pixels, max_pixels,
                                                     "serve_bytes: image_bytes")])


def decode_images(image_bytes, max_pixels=DEFAULT_MAX_PIXELS):
    """string [B] of PNG/JPEG/BMP -> uint8 [B, h, w, 3]; InvalidArgumentError when corrupt.

    Every image of the batch must have the same size (the outputs are dense tensors); the
    headers are checked first (check_image_bytes, check_encoded_sizes), so a request over
    `max_pixels` is refused without decoding it.
    """
    image_bytes = check_encoded_sizes(check_image_bytes(image_bytes), max_pixels)
    batch = tf.shape(image_bytes)[0]

    def decode_one(args):
        data, _ = args  # formats and headers were checked by check_encoded_sizes
        image = tf.cond(
            tf.equal(tf.strings.substr(data, 0, 3), IMAGE_MAGIC[1]),
            # OpenCV's (libjpeg's) accurate integer IDCT, as grdnet-predict and the training
            # cache decode; TF's default fast IDCT differs by up to 10 levels.
            lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
            lambda: tf.io.decode_image(data, channels=3, dtype=tf.uint8,
                                       expand_animations=False))
        # int64 cast: a raw Shape output inside map_fn trips a TF type-inference warning.
        return tf.reshape(image, [-1]), tf.cast(tf.shape(image), tf.int64)

    flat, shapes = tf.map_fn(
        decode_one, (image_bytes, tf.range(batch)),
        fn_output_signature=(tf.RaggedTensorSpec([None], tf.uint8, ragged_rank=0),
                             tf.TensorSpec([3], tf.int64)))
    same_size = tf.debugging.Assert(
        tf.reduce_all(tf.equal(shapes, shapes[:1])),
        ["all images of one serve_bytes request must have the same size; send images of "
         "different sizes in separate requests. Sizes [height, width, 3]:", shapes],
        summarize=30)
    with tf.control_dependencies([same_size]):
        images = tf.reshape(flat.flat_values,
                            tf.concat([[tf.cast(batch, tf.int64)], shapes[0]], axis=0))
    return tf.ensure_shape(images, [None, None, None, 3])


def outputs_of(model, params, decision, images, roi=None):
    """The exported outputs of `scoring.score_images` (reconstruction as uint8 RGB); the
    edge formats (grdnet_tf/serving/edge.py) return the same. `roi`: [B, h, w] (any
    resolution of the images' aspect ratio) or None."""
    out = scoring.score_images(model, images, params, decision, roi=roi)
    out[keys.RECONSTRUCTION] = to_uint8_rgb(out[keys.RECONSTRUCTION])
    return {key: out[key] for key in OUTPUTS}


def serving_functions(model, params, threshold, max_pixels=DEFAULT_MAX_PIXELS,
                      roi_template=None):
    """The three signature functions of the export, as tf.functions with None dimensions.

    Args:
        model: a restored GRDNet (only its inference `call` is traced).
        params: `scoring.ScoringParams` (model size, channels, window, patch mode).
        threshold: `scoring.Decision` (or a float image threshold: score > threshold is
            anomalous, default pixel threshold and span).
        max_pixels: decoded pixels (height x width over the batch) one request may hold.
        roi_template: optional float32 [h, w] mask (`read_roi_template`) that
            serving_default and serve_bytes apply to every image; serve_roi applies the
            request's ROI instead.

    Returns {signature name: tf.function}, serving_default first.
    """
    decision = (threshold if isinstance(threshold, scoring.Decision)
                else scoring.Decision(float(threshold)))

    def outputs(images, roi=None):
        if roi is None and roi_template is not None:
            roi = template_roi(roi_template, images)
        return outputs_of(model, params, decision, images, roi)

    max_pixels = int(max_pixels)

    @tf.function(input_signature=[IMAGES_SPEC], autograph=False)
    def serve(images):
        return outputs(check_images(images, max_pixels, "serving_default"))

    @tf.function(input_signature=[IMAGE_BYTES_SPEC], autograph=False)
    def serve_bytes(image_bytes):
        images = decode_images(image_bytes, max_pixels)
        out = outputs(images)
        heatmaps = heatmap_overlay(images, out[keys.ANOMALY_MAP])
        out[HEATMAP_PNG_BYTES] = tf.map_fn(tf.io.encode_png, heatmaps,
                                           fn_output_signature=tf.TensorSpec([], tf.string))
        return out

    @tf.function(input_signature=[IMAGES_SPEC, ROI_SPEC], autograph=False)
    def serve_roi(images, roi):
        images = check_images(images, max_pixels, "serve_roi")
        return outputs(images, roi=check_roi(roi, images))

    return {"serving_default": serve, "serve_bytes": serve_bytes, "serve_roi": serve_roi}


def inference_module(model):
    """A tf.Module tracking exactly the variables inference reads (nothing else is saved).

    It holds the underlying tf.Variables keyed by their Keras paths, not the Keras layers:
    a tracked Keras variable is written twice into the SavedModel graph (its tf.Variable
    and an initialised copy), and TF1-style loaders (TF Serving's session bundle,
    ``saved_model_cli run``) then restore the copy while the signatures read the
    uninitialised original ("Could not find variable ...").
    """
    module = tf.Module(name="grdnet_inference")
    for name, net in (("generator_encoder", model.generator.encoder),
                      ("generator_decoder", model.generator.decoder),
                      ("segmentator", model.segmentator)):
        variables = {variable.path: variable.value for variable in net.variables}
        if not all(isinstance(v, tf.Variable) for v in variables.values()):
            raise TypeError("export under an autocast scope: variable values are not "
                            "tf.Variables")
        setattr(module, name, variables)
    return module


def next_version(export_dir):
    """One more than the largest integer version folder in `export_dir` (1 when none)."""
    if not os.path.isdir(export_dir):
        return 1
    versions = [int(name) for name in os.listdir(export_dir)
                if name.isdigit() and os.path.isdir(os.path.join(export_dir, name))]
    return max(versions, default=0) + 1


def _resolve_threshold(threshold, calibration, model_dir):
    """(threshold, source): the --threshold flag wins over the run's calibration.json."""
    if threshold is not None:
        source = "flag"
    elif calibration is not None and calibration.get("threshold") is not None:
        threshold, source = calibration["threshold"], "calibration"
    else:
        raise ValueError(
            f"--model_dir={model_dir} has no {run_dir.CALIBRATION_JSON} (no calibrated "
            f"threshold): pass --threshold=FLOAT or calibrate the run first")
    threshold = float(threshold)
    if not math.isfinite(threshold):
        raise ValueError(f"--threshold={threshold} must be a finite number")
    return threshold, source


def _check_version(export_dir, version, overwrite):
    if version is None:
        return next_version(export_dir)
    if isinstance(version, bool) or int(version) != version or version < 1:
        raise ValueError(f"--version={version!r} must be a positive integer")
    version = int(version)
    if os.path.exists(os.path.join(export_dir, str(version))) and not overwrite:
        raise FileExistsError(
            f"--version={version}: {os.path.join(export_dir, str(version))} already exists; "
            f"pass --overwrite to replace it or omit --version to write version "
            f"{next_version(export_dir)}")
    return version


def _resolve_decision(threshold, pixel_threshold, calibration):
    """`scoring.Decision` of the export and the pixel threshold's source."""
    if pixel_threshold is not None:
        pixel_threshold = float(pixel_threshold)
        if not 0.0 <= pixel_threshold < 1.0:
            raise ValueError(f"--pixel_threshold={pixel_threshold} must lie in [0, 1)")
        source = "flag"
    else:
        source = (calibration or {}).get("pixel_threshold_source", "default")
    return scoring.Decision.from_run(calibration, threshold, pixel_threshold), source


def _metadata(loaded, params, decision, threshold_source, version, model_dir,
              export_format="saved_model", pixel_source="calibration", input_size=None):
    config = loaded.config
    threshold = decision.threshold
    return {
        "format": f"grdnet_tf.{export_format.replace('_', '')}/1",
        "version": version,
        "signatures": list(SIGNATURES) if export_format == "saved_model" else [],
        "file": None if export_format == "saved_model" else _edge().FILENAMES[export_format],
        "input_size": None if input_size is None else list(input_size),
        "outputs": list(OUTPUTS),
        "threshold": threshold,
        "threshold_source": threshold_source,
        "pixel_threshold": decision.pixel_threshold,
        "pixel_threshold_source": pixel_source,
        "normalization": {"min": decision.score_min, "max": decision.score_max},
        "calibration": run_dir.calibration_record(loaded.calibration),
        "image_size": list(config.data.image_size),
        "channels": int(config.data.channels),
        "smoothing_kernel": int(params.kernel),
        "pixel_map": params.pixel_map,
        "image_map": params.image_map,
        "residual_scale": float(params.residual_scale),
        "patch_scale": params.patch_scale,
        "patch_stride": params.patch_stride,
        "heatmap_alpha": HEATMAP_ALPHA,
        "model_dir": model_dir,
        "source_checkpoint": os.path.abspath(loaded.checkpoint_path),
        "precision": loaded.model.generator.dtype_policy.name,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "config": json.loads(config_lib.to_json(config)),
    }


def _template_metadata(path, template):
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    return {"file": os.path.abspath(path), "sha256": digest,
            "size": [int(v) for v in template.shape],
            "coverage": float(template.mean())}


def _write_metadata(version_dir, metadata):
    os.makedirs(os.path.join(version_dir, METADATA_DIR), exist_ok=True)
    run_dir.write_json(os.path.join(version_dir, METADATA_DIR, METADATA_JSON), metadata)


def _exchange(path_a, path_b):
    """Atomically swaps two directories (Linux renameat2 RENAME_EXCHANGE); False where the
    system or file system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(path_a), at_fdcwd, os.fsencode(path_b),
                 rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(code, os.strerror(code), path_b)


def _install(tmp_dir, final_dir, overwrite):
    """Renames the finished tmp folder into place; with overwrite swaps out the old one.

    The swap is one atomic exchange where the system allows it, so a reader (or a kill)
    sees the old or the new version, never neither; elsewhere it is two renames, and a
    kill between them leaves ``.old-<N>-*`` that the next export puts back
    (repair_interrupted_overwrite).
    """
    if not os.path.exists(final_dir):
        os.rename(tmp_dir, final_dir)   # fails if another writer created it meanwhile
        return
    if not overwrite:
        raise FileExistsError(f"{final_dir} already exists; pass --overwrite to replace it")
    base, name = os.path.split(final_dir)
    old_dir = os.path.join(base, f"{OLD_PREFIX}{name}-{uuid.uuid4().hex[:8]}")
    if _exchange(tmp_dir, final_dir):  # tmp_dir now holds the replaced version
        os.rename(tmp_dir, old_dir)
    else:
        os.rename(final_dir, old_dir)
        try:
            os.rename(tmp_dir, final_dir)
        except BaseException:
            os.rename(old_dir, final_dir)
            raise
    shutil.rmtree(old_dir, ignore_errors=True)


def _edge():
    from grdnet_tf.serving import edge  # tf2onnx and LiteRT load only for those formats
    return edge


def _writer(export_format, model, params, decision, input_size, functions,
            roi_template=None):
    """A function writing the model files of `export_format` into a version folder
    (`functions`: the SavedModel's serving functions)."""
    if export_format == "saved_model":
        return lambda folder: tf.saved_model.save(inference_module(model), folder,
                                                  signatures=functions)
    edge = _edge()
    write = {"onnx": edge.write_onnx, "litert": edge.write_litert}[export_format]
    return lambda folder: write(model, params, decision,
                                os.path.join(folder, edge.FILENAMES[export_format]),
                                input_size=input_size, roi_template=roi_template)


def _check_format(export_format, input_size, config):
    if export_format not in EXPORT_FORMATS:
        raise ValueError(f"--format={export_format} must be one of "
                         f"{', '.join(EXPORT_FORMATS)}")
    if export_format == "litert":
        _edge().check_litert(config)
    if input_size is None:
        return None
    return _edge().check_input_size(input_size, export_format)


def repair_interrupted_overwrite(export_dir, log_fn=logging.info):
    """Puts back a version whose --overwrite was killed between its two renames (only
    ``.old-<N>-*`` left) and deletes replaced versions left by a kill after the swap. Call
    with the export directory locked."""
    if not os.path.isdir(export_dir):
        return
    for name in sorted(os.listdir(export_dir)):
        version = name[len(OLD_PREFIX):].split("-", 1)[0]
        path = os.path.join(export_dir, name)
        if not (name.startswith(OLD_PREFIX) and version.isdigit() and os.path.isdir(path)):
            continue
        final_dir = os.path.join(export_dir, version)
        if os.path.exists(final_dir):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.rename(path, final_dir)
            log_fn(f"restored {final_dir} from {path} (an interrupted --overwrite)")


class ExportLock:
    """An exclusive ``flock`` on the export directory itself (no file is added to it) while
    an export writes there; the kernel drops it when the process ends, also on kill -9."""

    def __init__(self, export_dir):
        self._fd = os.open(export_dir, os.O_RDONLY)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._fd)
            raise FileExistsError(
                f"another export is writing to {export_dir} right now; wait for it to "
                f"finish and export again (the version number is chosen then)") from None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        os.close(self._fd)  # releases the flock


def check_finite_model(loaded, functions, params, probe_size=None):
    """ValueError when the restored weights hold NaN/Inf or give a non-finite score for a
    mid-grey image (of `probe_size`, default the model input size): a model whose scores
    are NaN flags no image (NaN > threshold is False)."""
    variables = [v for net in (loaded.model.generator.encoder, loaded.model.generator.decoder,
                               loaded.model.segmentator) for v in net.variables]
    bad = [v.path for v in variables if not np.isfinite(np.asarray(v.numpy())).all()]
    where = f"checkpoint {loaded.checkpoint_path}"
    if bad:
        raise ValueError(f"{where} holds non-finite weights ({len(bad)} tensors, e.g. "
                         f"{', '.join(bad[:3])}): refusing to export a model that scores "
                         f"NaN; resume or retrain the run (or pick --checkpoint)")
    grey = tf.fill([1, *(probe_size or params.image_size), 3], tf.constant(128, tf.uint8))
    out = functions["serving_default"](grey)
    score = float(out[keys.ANOMALY_SCORE][0])
    if not (math.isfinite(score) and np.isfinite(out[keys.ANOMALY_MAP].numpy()).all()):
        raise ValueError(f"{where} gives a non-finite anomaly score ({score}) for a grey "
                         f"image: refusing to export a model that would pass every image")


def export_run(model_dir, export_dir, version=None, overwrite=False, checkpoint="best",
               threshold=None, pixel_threshold=None, export_format="saved_model",
               input_size=None, max_pixels=DEFAULT_MAX_PIXELS, precision="float32",
               roi=None):
    """Exports a trained run as ``<export_dir>/<version>`` and returns that path.

    Args:
        model_dir: run directory (config.json, checkpoints/ or best/, calibration.json).
        export_dir: TF Serving model base path; created if missing.
        version: integer version; None = next_version(export_dir).
        overwrite: replace an existing version (otherwise FileExistsError).
        checkpoint: "best" (falls back to latest), "latest" or a checkpoint path.
        threshold: overrides calibration.json; required when the run has none.
        pixel_threshold: overrides calibration.json's (default 0.5 for runs without one).
        export_format: "saved_model" (TF Serving), "onnx" or "litert"
            (grdnet_tf/serving/edge.py).
        input_size: (h, w) fixed input of an ONNX / LiteRT export (LiteRT default: the
            model input size; ONNX default: free).
        max_pixels: decoded pixels one request may hold (height x width over the batch).
        precision: dtype policy of the exported networks (`choices.PRECISIONS`, as
            train.precision): float32, or float32 weights computing in bfloat16/float16;
            outputs and scoring stay float32.
        roi: optional ROI template file (a fixed camera's mask, white = inspect) baked
            into the export: every image's maps are zero outside it before its score, as
            grdnet-predict --roi does (SavedModel: serving_default and serve_bytes;
            serve_roi takes the request's ROI instead; ONNX and LiteRT: their one input).
            Images must have the template's aspect ratio.

    Flags are validated before the model is loaded and before anything is written; on any
    failure no version folder and no temporary folder is left behind.
    """
    model_dir = os.path.abspath(model_dir)
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"--model_dir={model_dir} does not exist")
    config = run_dir.load_run_config(model_dir)
    run_dir.find_checkpoint(model_dir, checkpoint)
    calibration = run_dir.read_calibration(model_dir)
    threshold_value, _ = _resolve_threshold(threshold, calibration, model_dir)
    _resolve_decision(threshold_value, pixel_threshold, calibration)
    checked_size = _check_format(export_format, input_size, config)
    _check_version(os.path.abspath(export_dir), version, overwrite)
    _check_max_pixels(max_pixels)
    choices.check("precision", precision, choices.PRECISIONS)
    if roi:
        check_template_size(read_roi_template(roi), checked_size)
    loaded = _load_at_precision(model_dir, checkpoint, precision, calibration)
    return export_model(loaded, export_dir, version=version, overwrite=overwrite,
                        threshold=threshold, model_dir=model_dir,
                        pixel_threshold=pixel_threshold, export_format=export_format,
                        input_size=input_size, max_pixels=max_pixels, roi=roi)


def _check_max_pixels(max_pixels):
    if isinstance(max_pixels, bool) or int(max_pixels) != max_pixels or max_pixels < 1:
        raise ValueError(f"--max_pixels={max_pixels!r} must be a positive integer")


def _load_at_precision(model_dir, checkpoint, precision, calibration):
    """`run_dir.load_for_inference` with the networks built under the policy `precision`
    (layers keep the policy in force when they are created) and the run's calibration as
    already read (with its baseline file: read and hash-checked once); the global policy
    is restored."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision)
    try:
        return run_dir.load_for_inference(model_dir, checkpoint, calibration=calibration)
    finally:
        keras.mixed_precision.set_global_policy(previous)


def export_model(loaded, export_dir, version=None, overwrite=False, threshold=None,
                 model_dir="", pixel_threshold=None, export_format="saved_model",
                 input_size=None, max_pixels=DEFAULT_MAX_PIXELS, roi=None):
    """Exports an already restored run (a ``run_dir.LoadedRun``); see export_run.

    `threshold` and `pixel_threshold` override ``loaded.calibration``; `model_dir` is
    recorded in the metadata. Refuses (ValueError) weights that are not finite or score
    NaN. The export directory is locked while the version is written (a concurrent export
    fails, FileExistsError).
    """
    export_dir = os.path.abspath(export_dir)
    threshold, threshold_source = _resolve_threshold(threshold, loaded.calibration,
                                                     model_dir)
    decision, pixel_source = _resolve_decision(threshold, pixel_threshold, loaded.calibration)
    input_size = _check_format(export_format, input_size, loaded.config)
    _check_max_pixels(max_pixels)
    _check_version(export_dir, version, overwrite)
    params = scoring.ScoringParams.from_run(loaded.config, loaded.calibration)
    template = read_roi_template(roi) if roi else None
    if export_format == "litert" and input_size is None:
        input_size = _edge().default_input_size(params)
        if template is not None:  # the template's size: the camera's aspect ratio
            input_size = tuple(int(v) for v in template.shape)
    check_template_size(template, input_size)
    functions = serving_functions(loaded.model, params, decision, max_pixels, template)
    check_finite_model(loaded, functions, params,
                       probe_size=None if template is None else template.shape)
    write = _writer(export_format, loaded.model, params, decision, input_size, functions,
                    template)
    os.makedirs(export_dir, exist_ok=True)
    with ExportLock(export_dir):
        repair_interrupted_overwrite(export_dir)
        version = _check_version(export_dir, version, overwrite)
        metadata = _metadata(loaded, params, decision, threshold_source, version, model_dir,
                             export_format, pixel_source, input_size)
        metadata["max_pixels"] = int(max_pixels)
        metadata["roi_template"] = None if template is None else _template_metadata(
            roi, template)
        return _write_version(export_dir, version, overwrite, write, metadata)


def _write_version(export_dir, version, overwrite, write, metadata):
    final_dir = os.path.join(export_dir, str(version))
    tmp_dir = tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{version}-", dir=export_dir)
    try:
        file_modes.follow_umask(tmp_dir, directory=True)  # mkdtemp makes 0700
        write(tmp_dir)
        _write_metadata(tmp_dir, metadata)
        _install(tmp_dir, final_dir, overwrite)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return final_dir


def read_metadata(version_dir):
    """The grdnet.json written next to an exported SavedModel."""
    with open(os.path.join(version_dir, METADATA_DIR, METADATA_JSON), encoding="utf-8") as f:
        return json.load(f)
