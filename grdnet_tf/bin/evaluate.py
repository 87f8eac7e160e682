"""grdnet-eval: metrics, report, plots and heatmaps of a trained run on a test split.

  grdnet-eval --model_dir=RUN --data_dir=CATEGORY_DIR --output_dir=OUT
"""
from absl import flags

from grdnet_tf.bin import common

common.quiet_tensorflow()

_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Training run directory.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "MVTec-style category folder (uses test/).")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where metrics.json, report.md and "
                                  "plots are written.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "best, latest or a checkpoint path.")
_THRESHOLD = flags.DEFINE_float("threshold", None, "Overrides the calibrated threshold.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Images per scoring batch.")
_OVERLAYS = flags.DEFINE_integer("num_overlays", 4, "Overlays of the N most and N least "
                                 "anomalous test images.")
_USE_ROI = flags.DEFINE_bool("use_roi", False, "Hard-mask maps with test ROIs "
                             "(test_roi/<defect>/<stem>.*) before scoring.")


def main(argv):
    common.check_flags(argv, _MODEL_DIR, _DATA_DIR, _OUTPUT_DIR)
    with common.quiet_import():  # TensorFlow loads: after the cheap checks
        from grdnet_tf.evaluation import eval_lib
    try:
        result = eval_lib.evaluate(_MODEL_DIR.value, _DATA_DIR.value, _OUTPUT_DIR.value,
                                   checkpoint=_CHECKPOINT.value, threshold=_THRESHOLD.value,
                                   batch_size=_BATCH_SIZE.value,
                                   num_overlays=_OVERLAYS.value, use_roi=_USE_ROI.value)
    except common.USER_ERRORS as e:
        common.fail(str(e))
    print(eval_lib.headline(result, _OUTPUT_DIR.value))


def run():
    common.run_binary(main, __name__)


if __name__ == "__main__":
    run()
