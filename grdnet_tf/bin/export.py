"""grdnet-export: exports a trained run as a versioned SavedModel (TensorFlow Serving), ONNX
or LiteRT (TFLite) model.

    grdnet-export --model_dir=RUN --export_dir=BASE [--format=saved_model|onnx|litert]
                  [--version=N] [--overwrite] [--checkpoint=best|latest|PATH]
                  [--threshold=FLOAT] [--pixel_threshold=FLOAT] [--input_size=H,W]
                  [--max_pixels=N] [--roi=MASK]

Writes BASE/N/ (N: one more than the largest existing version, 1 for an empty BASE) and
prints its path. See grdnet_tf/serving/export_lib.py, grdnet_tf/serving/edge.py and
export/README.md.
"""
from absl import flags

from grdnet_tf import choices
from grdnet_tf.bin import common

common.quiet_tensorflow()

_MODEL_DIR = flags.DEFINE_string("model_dir", None,
                                 "Training run directory (config.json, checkpoints).")
_EXPORT_DIR = flags.DEFINE_string("export_dir", None,
                                  "Model base path; the export goes to <export_dir>/<N>.")
_VERSION = flags.DEFINE_integer("version", None,
                                "Version number N >= 1 (default: next free version).")
_OVERWRITE = flags.DEFINE_boolean("overwrite", False,
                                  "Replace <export_dir>/<version> if it exists.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best",
                                  "best (falls back to latest), latest, or a path.")
_THRESHOLD = flags.DEFINE_float("threshold", None,
                                "Anomaly threshold; default: the run's calibration.json.")
_PIXEL_THRESHOLD = flags.DEFINE_float(
    "pixel_threshold", None, "Defect-mask threshold of the map; default: the run's "
    "calibration.json (0.5 for runs calibrated without one).")
_FORMAT = flags.DEFINE_enum("format", "saved_model", ["saved_model", "onnx", "litert"],
                            "saved_model (TF Serving), onnx (onnxruntime) or litert (TFLite).")
_INPUT_SIZE = flags.DEFINE_list(
    "input_size", None, "HEIGHT,WIDTH of the fixed input of an onnx / litert export "
    "(litert default: the model input size; onnx default: any size).")
_MAX_PIXELS = flags.DEFINE_integer(
    "max_pixels", 2 ** 24, "Decoded pixels (height x width, summed over the batch) one "
    "request may hold; larger requests get an InvalidArgument error (export/README.md).")
_ROI = flags.DEFINE_string(
    "roi", None, "ROI template (a fixed camera's mask, white = inspect) baked into the "
    "export: maps are zero outside it before the image score; images must have its aspect "
    "ratio. A LiteRT export without --input_size then takes the template's size.")
_PRECISION = flags.DEFINE_enum(
    "precision", "float32", list(choices.PRECISIONS),
    "Compute dtype of the exported networks (float32 weights in every case), as "
    "train.precision.")


def main(argv):
    common.check_flags(argv, _MODEL_DIR, _EXPORT_DIR)
    with common.quiet_import():  # TensorFlow loads: after the cheap checks
        from grdnet_tf.serving import export_lib
    try:
        # Bad flags or run directory: export_lib raises before anything is written.
        path = export_lib.export_run(_MODEL_DIR.value, _EXPORT_DIR.value,
                                     version=_VERSION.value, overwrite=_OVERWRITE.value,
                                     checkpoint=_CHECKPOINT.value, threshold=_THRESHOLD.value,
                                     pixel_threshold=_PIXEL_THRESHOLD.value,
                                     export_format=_FORMAT.value,
                                     input_size=_input_size(),
                                     max_pixels=_MAX_PIXELS.value, precision=_PRECISION.value,
                                     roi=_ROI.value)
    except common.USER_ERRORS as e:
        common.fail(str(e))
    print(path)


def _input_size():
    if _INPUT_SIZE.value is None:
        return None
    try:
        return tuple(int(v) for v in _INPUT_SIZE.value)
    except ValueError:
        common.fail(f"--input_size={','.join(_INPUT_SIZE.value)} must be two positive "
                    f"integers HEIGHT,WIDTH")


def run():
    common.run_binary(main, __name__)


if __name__ == "__main__":
    run()
