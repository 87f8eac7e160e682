"""Exports a trained run as a versioned SavedModel for TensorFlow Serving.

    grdnet-export --model_dir=RUN --export_dir=BASE [--version=N] [--overwrite]
                  [--checkpoint=best|latest|PATH] [--threshold=FLOAT]

Writes BASE/N/ (N: one more than the largest existing version, 1 for an empty BASE) and
prints its path. See grdnet_tf/serving/export_lib.py and export/README.md.
"""
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "Training run directory (config.json, checkpoints).")
flags.DEFINE_string("export_dir", None, "Model base path; the export goes to <export_dir>/<N>.")
flags.DEFINE_integer("version", None, "Version number N (default: next free version).",
                     lower_bound=1)
flags.DEFINE_boolean("overwrite", False, "Replace <export_dir>/<version> if it exists.")
flags.DEFINE_string("checkpoint", "best", "best (falls back to latest), latest, or a path.")
flags.DEFINE_float("threshold", None, "Anomaly threshold; default: the run's calibration.json.")
flags.mark_flags_as_required(["model_dir", "export_dir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # Imported after flag parsing: a missing flag is reported without TensorFlow's start-up.
    from grdnet_tf.serving import export_lib

    try:
        path = export_lib.export_run(FLAGS.model_dir, FLAGS.export_dir, version=FLAGS.version,
                                     overwrite=FLAGS.overwrite, checkpoint=FLAGS.checkpoint,
                                     threshold=FLAGS.threshold)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        # Bad flags or run directory: nothing has been written; one clear line, exit 1.
        print(f"grdnet-export: error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


def run():
    app.run(main)


if __name__ == "__main__":
    run()
