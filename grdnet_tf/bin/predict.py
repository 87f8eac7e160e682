"""grdnet-predict: score images with a trained run; CSV (path, score, is_anomalous) + heatmaps.

  grdnet-predict --model_dir=RUN --input='photos/*.png' --output_dir=OUT [--roi=MASK|DIR]
"""
from absl import flags

from grdnet_tf.bin import common

common.quiet_tensorflow()

_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Training run directory.")
_INPUT = flags.DEFINE_string("input", None, "An image, a folder (recursive) or a glob.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where predictions.csv and heatmaps/ go.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "best, latest or a checkpoint path.")
_THRESHOLD = flags.DEFINE_float("threshold", None, "Overrides the calibrated threshold.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Images per scoring batch.")
_HEATMAPS = flags.DEFINE_bool("heatmaps", True, "Write a heatmap overlay per image.")
_ROI = flags.DEFINE_string(
    "roi", None, "ROI mask: one file for every image (a fixed camera's template, white = "
    "inspect), or a folder of masks named by image stem (<stem>.*, as grdnet-roi writes "
    "them). Maps are zero outside it before the image score.")
_SKIP_BAD = flags.DEFINE_bool("skip_bad_files", False, "Skip unreadable images (warn) "
                              "instead of stopping.")


def main(argv):
    common.check_flags(argv, _MODEL_DIR, _INPUT, _OUTPUT_DIR)
    with common.quiet_import():  # TensorFlow loads: after the cheap checks
        from grdnet_tf.evaluation import eval_lib
    try:
        result = eval_lib.predict(_MODEL_DIR.value, _INPUT.value, _OUTPUT_DIR.value,
                                  checkpoint=_CHECKPOINT.value, threshold=_THRESHOLD.value,
                                  batch_size=_BATCH_SIZE.value, overlays=_HEATMAPS.value,
                                  skip_bad_files=_SKIP_BAD.value, roi=_ROI.value)
    except common.USER_ERRORS as e:
        common.fail(str(e))
    print(f"{result['count']} image(s) scored, {result['flagged']} anomalous; "
          f"{result['predictions_csv']}")


def run():
    common.run_binary(main, __name__)


if __name__ == "__main__":
    run()
