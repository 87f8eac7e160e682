"""grdnet-calibrate: calibrate a trained run again on its validation split, without
retraining (smoothing window, map sources, image and pixel thresholds).

  grdnet-calibrate --model_dir=runs/NAME --data_dir=CATEGORY_DIR
      [--config.scoring.calibration_mask_area_min=0.0005
       --config.scoring.calibration_mask_area_max=0.01
       --config.scoring.threshold_quantile=0.995 ...]

Only scoring.* keys may change (documented in grdnet_tf/config.py); --data_dir must be the
data the run was trained on (checked against its data.json). calibration.json and
config.json are replaced, the current ones kept as calibration.previous.json and
config.previous.json. Export again afterwards: an export holds the thresholds of its time.
"""
import os

from absl import flags

from grdnet_tf.bin import common

common.quiet_tensorflow()

_MODEL_DIR = flags.DEFINE_string("model_dir", None, "A trained run directory.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "The category folder the run was "
                                "trained on (its validation split is calibrated on).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "best, latest or a checkpoint path.")


def main(argv):
    common.check_flags(argv, _MODEL_DIR, (_DATA_DIR, "the category folder of the run"))
    with common.quiet_import():  # TensorFlow loads: after the cheap checks
        from grdnet_tf import run_dir
        from grdnet_tf.training import recalibrate
    try:
        cal = recalibrate.recalibrate(_MODEL_DIR.value, _DATA_DIR.value,
                                      common.config_overrides(), checkpoint=_CHECKPOINT.value)
    except common.USER_ERRORS as e:
        common.fail(str(e))
    previous = run_dir.read_json(recalibrate.previous_path(
        os.path.join(_MODEL_DIR.value, run_dir.CALIBRATION_JSON)))
    was = "" if previous is None else f" (was {previous['threshold']:.4f})"
    print(f"calibrated {_MODEL_DIR.value} ({cal['checkpoint']}): window "
          f"{cal['smoothing_kernel']}, maps {cal.get('pixel_map', 'segmentator')} (pixels) / "
          f"{cal.get('image_map', 'segmentator')} (image score), threshold "
          f"{cal['threshold']:.4f}{was}; previous files kept as *.previous.json; export "
          "again to serve the new thresholds")


def run():
    common.run_binary(main, __name__, takes_config=True)


if __name__ == "__main__":
    run()
