"""grdnet-export: exports a trained run as a versioned SavedModel for TensorFlow Serving.

    grdnet-export --model_dir=RUN --export_dir=BASE [--version=N] [--overwrite]
                  [--checkpoint=best|latest|PATH] [--threshold=FLOAT] [--max_pixels=N]

Writes BASE/N/ (N: one more than the largest existing version, 1 for an empty BASE) and
prints its path. See grdnet_tf/serving/export_lib.py and export/README.md.
"""
from absl import app, flags

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
_MAX_PIXELS = flags.DEFINE_integer(
    "max_pixels", 2 ** 24, "Decoded pixels (height x width, summed over the batch) one "
    "request may hold; larger requests get an InvalidArgument error (export/README.md).")


def main(argv):
    common.check_flags(argv, _MODEL_DIR, _EXPORT_DIR)
    from grdnet_tf.serving import export_lib
    try:
        # Bad flags or run directory: export_lib raises before anything is written.
        path = export_lib.export_run(_MODEL_DIR.value, _EXPORT_DIR.value,
                                     version=_VERSION.value, overwrite=_OVERWRITE.value,
                                     checkpoint=_CHECKPOINT.value, threshold=_THRESHOLD.value,
                                     max_pixels=_MAX_PIXELS.value)
    except common.USER_ERRORS as e:
        common.fail(str(e))
    print(path)


def run():
    app.run(main)


if __name__ == "__main__":
    run()
