"""ONNX and LiteRT (TFLite) exports of the scoring graph, for runtimes without TensorFlow.

    write_onnx(model, params, decision, path, input_size=None)
    write_litert(model, params, decision, path, input_size, representative=None)

Both convert the `tensor_function` below: the same `grdnet_tf.scoring.score_images` as the
SavedModel's ``serving_default`` (``export_lib.outputs_of``), so a served, an ONNX and a
LiteRT score of one image agree (tests/test_edge.py pins 1e-3 on scores, 1e-2 on maps).

Input ``images`` uint8 [B, h, w, 3] RGB; outputs as ``serving_default``: anomaly_score,
normalized_score, is_anomalous, anomaly_map, anomaly_mask, reconstruction.

* **ONNX** (tf2onnx, opset `ONNX_OPSET`): batch and size free, like the SavedModel; a fixed
  `input_size` may be given.
* **LiteRT**: one fixed size [1, h, w, 3] (`input_size`, default ``data.image_size``). At a
  static size every resize weight matrix is a constant (`preprocess.axis_weights`); at a
  dynamic size the weights are float64 ops in a `tf.cond`, which LiteRT's builtin ops do
  not cover (it would need the TF Select / flex runtime). With `representative` (uint8
  images) the model is post-training quantised to int8 (float fallback where an op has no
  int8 kernel; the uint8 input and float outputs stay).
* A patch-mode run (``data.patch_scale > 0``) exports to ONNX (tiled, as grdnet-predict);
  LiteRT refuses it (`check_litert`).
* Neither has ``serve_bytes`` or ``serve_roi``: image decoding (DecodePng, DecodeJpeg,
  string tensors) has no ONNX or LiteRT builtin; decode on the device and feed pixels.
"""
import importlib
import os
import tempfile

import numpy as np
import tensorflow as tf

from grdnet_tf.data import tiling

FORMATS = ("onnx", "litert")
FILENAMES = {"onnx": "model.onnx", "litert": "model.tflite"}
ONNX_OPSET = 17
INPUT_NAME = "images"
SIGNATURE = "serving_default"


def input_spec(input_size=None, batch=None):
    """uint8 RGB images [batch, h, w, 3]; None = free."""
    height, width = (None, None) if input_size is None else (int(v) for v in input_size)
    return tf.TensorSpec([batch, height, width, 3], tf.uint8, name=INPUT_NAME)


def tensor_function(model, params, decision, spec, roi_template=None):
    """The `serving_default` computation as a tf.function over `spec` (with the ROI
    template baked in, when given: export_lib.template_roi)."""
    from grdnet_tf.serving import export_lib

    def serve(images):
        roi = (None if roi_template is None
               else export_lib.template_roi(roi_template, images, check=False))
        return export_lib.outputs_of(model, params, decision, images, roi)

    return tf.function(serve, input_signature=[spec], autograph=False)


def _edge_module(name, what):
    """Imports an optional edge-format dependency (the `edge` extra of setup.py)."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise ValueError(f"{what} needs the package {name.split('.')[0]}, which is not "
                         "installed: pip install 'grdnet_tf[edge]' (or '.[edge]' in a "
                         f"clone) ({e})") from None


def write_onnx(model, params, decision, path, input_size=None, roi_template=None):
    """Converts the scoring graph to ONNX at `path` (free batch and size by default;
    `roi_template`: export_lib.read_roi_template's mask, baked in)."""
    tf2onnx = _edge_module("tf2onnx", "the ONNX export")

    spec = input_spec(input_size)
    function = tensor_function(model, params, decision, spec, roi_template)
    tf2onnx.convert.from_function(function, input_signature=[spec], opset=ONNX_OPSET,
                                  output_path=os.fspath(path))


def write_litert(model, params, decision, path, input_size, representative=None,
                 roi_template=None):
    """Converts the scoring graph at one size [1, h, w, 3] to a LiteRT flatbuffer at `path`.

    `representative`: optional iterable of uint8 [h, w, 3] images (e.g. training normals):
    int8 post-training quantisation calibrated on them. `roi_template`: as write_onnx.
    """
    from grdnet_tf.serving import export_lib

    spec = input_spec(input_size, batch=1)
    function = tensor_function(model, params, decision, spec, roi_template)
    # Through a SavedModel: the converter then keeps the signature with its output names.
    with tempfile.TemporaryDirectory(prefix=".litert-",
                                     dir=os.path.dirname(os.path.abspath(path))) as folder:
        tf.saved_model.save(export_lib.inference_module(model), folder,
                            signatures={SIGNATURE: function})
        converter = tf.lite.TFLiteConverter.from_saved_model(folder, signature_keys=[SIGNATURE])
        if representative is not None:
            images = [np.asarray(image, np.uint8) for image in representative]
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: ([image[None]] for image in images)
        flatbuffer = converter.convert()
    with open(path, "wb") as f:
        f.write(flatbuffer)


class OnnxRunner:
    """onnxruntime session of an ONNX export: ``runner(images) -> {output name: array}``."""

    def __init__(self, path, threads=1):
        onnxruntime = _edge_module("onnxruntime", "running an ONNX export")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(
            os.fspath(path), options, providers=["CPUExecutionProvider"])
        self.names = [o.name for o in self.session.get_outputs()]

    def __call__(self, images):
        values = self.session.run(None, {INPUT_NAME: np.asarray(images, np.uint8)})
        return dict(zip(self.names, values))


class LiteRTRunner:
    """LiteRT interpreter of a LiteRT export: ``runner(images [1, h, w, 3]) -> {name: array}``."""

    def __init__(self, path, threads=1):
        interpreter = _edge_module("ai_edge_litert.interpreter", "running a LiteRT export")
        self.interpreter = interpreter.Interpreter(model_path=os.fspath(path),
                                                   num_threads=threads)
        self.runner = self.interpreter.get_signature_runner(SIGNATURE)
        self.input_shape = tuple(int(v) for v in
                                 self.runner.get_input_details()[INPUT_NAME]["shape"])

    def __call__(self, images):
        images = np.asarray(images, np.uint8)
        if images.shape != self.input_shape:
            raise ValueError(f"this LiteRT model takes uint8 {list(self.input_shape)} images "
                             f"(its export's --input_size), got {list(images.shape)}")
        return {k: np.asarray(v) for k, v in self.runner(**{INPUT_NAME: images}).items()}


def runner(export_format, path, threads=1):
    """An `OnnxRunner` or `LiteRTRunner` of an exported file."""
    return {"onnx": OnnxRunner, "litert": LiteRTRunner}[export_format](path, threads)


def default_input_size(params):
    """The LiteRT input size when none is given: the model input (whole-image mode)."""
    return tuple(int(v) for v in params.image_size)


def check_litert(config):
    """ValueError for a patch-mode run: its tiles are a `tf.map_fn` over the batch, whose
    TensorList has no static element shape, which the LiteRT converter requires."""
    if tiling.patch_mode(config):
        raise ValueError(
            f"--format=litert: the run is in patch mode (data.patch_scale="
            f"{config.data.patch_scale}), whose tiled scoring does not convert to LiteRT "
            f"(a map over the batch with dynamic tile shapes); export --format=onnx or "
            f"saved_model, which tile as grdnet-predict does")


def check_input_size(input_size, export_format):
    """(h, w) ints or None (ONNX only); ValueError naming --input_size otherwise."""
    if input_size is None:
        return None
    size = tuple(input_size)
    if len(size) != 2 or any(int(v) != v or v < 1 for v in size):
        raise ValueError(f"--input_size={','.join(str(v) for v in size)} must be two "
                         f"positive integers HEIGHT,WIDTH")
    if export_format == "saved_model":
        raise ValueError("--input_size applies to --format=onnx|litert only (the SavedModel "
                         "takes any size)")
    return tuple(int(v) for v in size)

