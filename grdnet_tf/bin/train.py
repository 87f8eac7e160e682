"""grdnet-train: train (or resume) GRD-Net on an MVTec-style category folder.

  grdnet-train --config=configs/cpu_small.py --model_dir=runs/tire \
      --data_dir=../shared/data/mvtec3d_tire [--config.train.epochs=10 ...]

Running the same command again resumes from the last checkpoint in --model_dir (with the
same config and data; --resume_with_changes otherwise).
"""
import os

from absl import app, flags, logging
from ml_collections import config_flags

from grdnet_tf.bin import common

common.quiet_tensorflow()

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/NAME.py); override keys with --config.KEY=VALUE.",
    lock_config=True)
_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Run directory (checkpoints, logs).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "MVTec-style category folder.")
_RESUME_WITH_CHANGES = flags.DEFINE_boolean(
    "resume_with_changes", False, "Resume --model_dir even when the config or the data "
    "differ from its config.json / data.json (the differences are logged).")


def main(argv):
    common.check_flags(argv, (_CONFIG, "e.g. --config=configs/cpu_small.py"), _MODEL_DIR,
                       (_DATA_DIR, "an MVTec-style category folder"))
    if not os.path.isdir(_DATA_DIR.value):
        common.fail(f"--data_dir={_DATA_DIR.value} does not exist (an MVTec-style category "
                    f"folder)")
    from grdnet_tf import config as config_lib
    try:
        config_lib.validate(_CONFIG.value)
    except common.USER_ERRORS as e:
        common.fail(str(e))
    if _CONFIG.value.train.strategy == "multi_worker":
        # Read when TensorFlow loads; see grdnet_tf.training.strategy (oneDNN crash).
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    from grdnet_tf.training import train_lib  # imports TensorFlow: after the cheap checks
    logging.set_verbosity(logging.INFO)
    try:
        summary = train_lib.train(_CONFIG.value, _DATA_DIR.value, _MODEL_DIR.value,
                                  resume_with_changes=_RESUME_WITH_CHANGES.value)
    except common.USER_ERRORS + (FloatingPointError,) as e:
        # + a diverged run, stopped before saving bad weights
        common.fail(str(e))
    print(f"trained {summary['epochs']} epochs ({summary['steps']} steps); "
          f"checkpoints: {summary['checkpoint']}; TensorBoard: tensorboard --logdir "
          f"{summary['logs_dir']}; threshold: {summary['threshold']}")


def _parse_flags(argv):
    """absl flag parsing, plus a clear error for a --config.KEY override naming no field.

    ml_collections raises AttributeError/KeyError (not a flags.Error) for an unknown key,
    which absl would print as a traceback.
    """
    try:
        return app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError) as e:
        field = str(e).strip("\"' ")
        overrides = [a[2:].split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]
        bad = [o for o in overrides if field in o.split(".")[1:]] or overrides
        common.fail(f"unknown config key: {', '.join('--' + o for o in bad)} (no field "
                    f"{field!r}; the keys are listed in grdnet_tf/config.py)")


def run():
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
