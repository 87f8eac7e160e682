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
import datetime
import json
import math
import os
import shutil
import tempfile
import uuid

import keras
import tensorflow as tf

from grdnet_tf import config as config_lib
from grdnet_tf import choices, file_modes, heatmap, keys, run_dir, scoring

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


def decode_images(image_bytes):
    """string [B] of PNG/JPEG/BMP -> uint8 [B, h, w, 3]; InvalidArgumentError when corrupt.

    Every image of the batch must have the same size (the outputs are dense tensors).
    """
    batch = tf.shape(image_bytes)[0]
    checks = [tf.debugging.assert_positive(
        batch, message="image_bytes must hold at least one encoded image")]

    def decode_one(args):
        data, index = args
        known = tf.reduce_any([tf.equal(tf.strings.substr(data, 0, len(magic)), magic)
                               for magic in IMAGE_MAGIC])
        message = tf.strings.format(
            "image_bytes[{}] is not a PNG, JPEG or BMP image ({} bytes)",
            (index, tf.strings.length(data)))
        with tf.control_dependencies([tf.debugging.Assert(known, [message])]):
            data = tf.identity(data)
        image = tf.cond(
            tf.equal(tf.strings.substr(data, 0, 3), IMAGE_MAGIC[1]),
            # OpenCV's (libjpeg's) accurate integer IDCT, as grdnet-predict and the training
            # cache decode; TF's default fast IDCT differs by up to 10 levels.
            lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
            lambda: tf.io.decode_image(data, channels=3, dtype=tf.uint8,
                                       expand_animations=False))
        # int64 cast: a raw Shape output inside map_fn trips a TF type-inference warning.
        return tf.reshape(image, [-1]), tf.cast(tf.shape(image), tf.int64)

    with tf.control_dependencies(checks):
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
    edge formats (grdnet_tf/serving/edge.py) return the same."""
    out = scoring.score_images(model, images, params, decision, roi=roi)
    out[keys.RECONSTRUCTION] = to_uint8_rgb(out[keys.RECONSTRUCTION])
    return {key: out[key] for key in OUTPUTS}


def serving_functions(model, params, threshold):
    """The three signature functions of the export, as tf.functions with None dimensions.

    Args:
        model: a restored GRDNet (only its inference `call` is traced).
        params: `scoring.ScoringParams` (model size, channels, window, patch mode).
        threshold: `scoring.Decision` (or a float image threshold: score > threshold is
            anomalous, default pixel threshold and span).

    Returns {signature name: tf.function}, serving_default first.
    """
    decision = (threshold if isinstance(threshold, scoring.Decision)
                else scoring.Decision(float(threshold)))

    def outputs(images, roi=None):
        return outputs_of(model, params, decision, images, roi)

    @tf.function(input_signature=[IMAGES_SPEC], autograph=False)
    def serve(images):
        return outputs(images)

    @tf.function(input_signature=[IMAGE_BYTES_SPEC], autograph=False)
    def serve_bytes(image_bytes):
        images = decode_images(image_bytes)
        out = outputs(images)
        heatmaps = heatmap_overlay(images, out[keys.ANOMALY_MAP])
        out[HEATMAP_PNG_BYTES] = tf.map_fn(tf.io.encode_png, heatmaps,
                                           fn_output_signature=tf.TensorSpec([], tf.string))
        return out

    @tf.function(input_signature=[IMAGES_SPEC, ROI_SPEC], autograph=False)
    def serve_roi(images, roi):
        check = tf.debugging.assert_equal(
            tf.shape(roi), tf.shape(images)[:3],
            message="roi must be uint8 [batch, height, width] matching images "
                    "[batch, height, width, 3]")
        with tf.control_dependencies([check]):
            roi = tf.identity(roi)
        return outputs(images, roi=roi)

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
        "calibration": loaded.calibration,
        "image_size": list(config.data.image_size),
        "channels": int(config.data.channels),
        "smoothing_kernel": int(params.kernel),
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


def _write_metadata(version_dir, metadata):
    os.makedirs(os.path.join(version_dir, METADATA_DIR), exist_ok=True)
    run_dir.write_json(os.path.join(version_dir, METADATA_DIR, METADATA_JSON), metadata)


def _install(tmp_dir, final_dir, overwrite):
    """Renames the finished tmp folder into place; with overwrite swaps out the old one."""
    if not os.path.exists(final_dir):
        os.rename(tmp_dir, final_dir)   # fails if another writer created it meanwhile
        return
    if not overwrite:
        raise FileExistsError(f"{final_dir} already exists; pass --overwrite to replace it")
    base, name = os.path.split(final_dir)
    old_dir = os.path.join(base, f"{OLD_PREFIX}{name}-{uuid.uuid4().hex[:8]}")
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


def _writer(export_format, model, params, decision, input_size):
    """A function writing the model files of `export_format` into a version folder."""
    if export_format == "saved_model":
        functions = serving_functions(model, params, decision)
        return lambda folder: tf.saved_model.save(inference_module(model), folder,
                                                  signatures=functions)
    edge = _edge()
    write = {"onnx": edge.write_onnx, "litert": edge.write_litert}[export_format]
    return lambda folder: write(model, params, decision,
                                os.path.join(folder, edge.FILENAMES[export_format]),
                                input_size=input_size)


def _check_format(export_format, input_size, config):
    if export_format not in EXPORT_FORMATS:
        raise ValueError(f"--format={export_format} must be one of "
                         f"{', '.join(EXPORT_FORMATS)}")
    if export_format == "litert":
        _edge().check_litert(config)
    if input_size is None:
        return None
    return _edge().check_input_size(input_size, export_format)


def export_run(model_dir, export_dir, version=None, overwrite=False, checkpoint="best",
               threshold=None, pixel_threshold=None, export_format="saved_model",
               input_size=None, precision="float32"):
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
        precision: dtype policy of the exported networks (`choices.PRECISIONS`, as
            train.precision): float32, or float32 weights computing in bfloat16/float16;
            outputs and scoring stay float32.

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
    _check_format(export_format, input_size, config)
    _check_version(os.path.abspath(export_dir), version, overwrite)
    choices.check("precision", precision, choices.PRECISIONS)
    loaded = _load_at_precision(model_dir, checkpoint, precision)
    return export_model(loaded, export_dir, version=version, overwrite=overwrite,
                        threshold=threshold, model_dir=model_dir,
                        pixel_threshold=pixel_threshold, export_format=export_format,
                        input_size=input_size)


def _load_at_precision(model_dir, checkpoint, precision):
    """`run_dir.load_for_inference` with the networks built under the policy `precision`
    (layers keep the policy in force when they are created); the global policy is restored."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision)
    try:
        return run_dir.load_for_inference(model_dir, checkpoint)
    finally:
        keras.mixed_precision.set_global_policy(previous)


def export_model(loaded, export_dir, version=None, overwrite=False, threshold=None,
                 model_dir="", pixel_threshold=None, export_format="saved_model",
                 input_size=None):
    """Exports an already restored run (a ``run_dir.LoadedRun``); see export_run.

    `threshold` and `pixel_threshold` override ``loaded.calibration``; `model_dir` is
    recorded in the metadata.
    """
    export_dir = os.path.abspath(export_dir)
    threshold, threshold_source = _resolve_threshold(threshold, loaded.calibration,
                                                     model_dir)
    decision, pixel_source = _resolve_decision(threshold, pixel_threshold, loaded.calibration)
    input_size = _check_format(export_format, input_size, loaded.config)
    version = _check_version(export_dir, version, overwrite)
    params = scoring.ScoringParams.from_run(loaded.config, loaded.calibration)
    if export_format == "litert" and input_size is None:
        input_size = _edge().default_input_size(params)
    write = _writer(export_format, loaded.model, params, decision, input_size)
    metadata = _metadata(loaded, params, decision, threshold_source, version, model_dir,
                         export_format, pixel_source, input_size)

    os.makedirs(export_dir, exist_ok=True)
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
