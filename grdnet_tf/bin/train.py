"""grdnet-train: train (or resume) GRD-Net on a category folder.

  grdnet-train --config=cpu_small --model_dir=runs/NAME --data_dir=CATEGORY_DIR
      [--config.train.epochs=10 --config.data.channels=1 ...]

--config is a named config (cpu_small, demo, paper, tiny) or a config file; every key can be
overridden with --config.KEY=VALUE (the keys are documented in grdnet_tf/config.py). The
category folder is in MVTec AD, native MVTec 3D-AD or plain folder layout
(--config.data.layout, grdnet_tf/data/mvtec.py). Running the same command again resumes
from the last checkpoint in --model_dir (with the same config and data;
--resume_with_changes otherwise).
"""
import os

from absl import flags

from grdnet_tf.bin import common

common.quiet_tensorflow()

_CONFIG = common.define_config_flag()
_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Run directory (checkpoints, logs, "
                                 "config.json, calibration.json); created if missing.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "The category folder (MVTec AD, MVTec "
                                "3D-AD or plain folder layout; see --config.data.layout).")
_RESUME_WITH_CHANGES = flags.DEFINE_boolean(
    "resume_with_changes", False, "Resume --model_dir even when the config or the data "
    "differ from its config.json / data.json (the differences are logged).")


def main(argv):
    common.check_flags(argv, (_CONFIG, "e.g. --config=cpu_small"), _MODEL_DIR,
                       (_DATA_DIR, "a category folder"))
    if not os.path.isdir(_DATA_DIR.value):
        common.fail(f"--data_dir={_DATA_DIR.value} does not exist (a category folder)")
    config = common.load_config(_CONFIG)
    if config.train.strategy == "multi_worker":
        # Read when TensorFlow loads; see grdnet_tf.training.strategy (oneDNN crash).
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    with common.quiet_import():  # TensorFlow loads: after the cheap checks
        from grdnet_tf.training import train_lib
    try:
        summary = train_lib.train(config, _DATA_DIR.value, _MODEL_DIR.value,
                                  resume_with_changes=_RESUME_WITH_CHANGES.value)
    except common.USER_ERRORS + (FloatingPointError,) as e:
        # + a diverged run, stopped before saving bad weights
        common.fail(str(e))
    print(f"trained {summary['epochs']} epochs ({summary['steps']} steps); "
          f"checkpoints: {summary['checkpoint']}; TensorBoard: tensorboard --logdir "
          f"{summary['logs_dir']}; threshold: {summary['threshold']}")


def run():
    common.run_binary(main, __name__, takes_config=True)


if __name__ == "__main__":
    run()
