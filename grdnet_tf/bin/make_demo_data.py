"""grdnet-demo-data: writes the embedded synthetic demo dataset (MVTec AD layout) and prints
its category folder.

    grdnet-demo-data --output_dir=demo_data [--seed=0] [--category=widget]
                     [--validation_images=100]

Run again, it reuses an identical dataset, or deletes only the files its marker
``DEMO_DATASET.txt`` lists before writing the new ones; files it did not write stop it with
an error naming them.
"""
from absl import flags

from grdnet_tf.bin import common

common.quiet_tensorflow()

_OUTPUT_DIR = flags.DEFINE_string("output_dir", "demo_data",
                                  "Parent folder of the category folder.")
_SEED = flags.DEFINE_integer("seed", 0, "Generator seed (same seed -> byte-identical files).")
_CATEGORY = flags.DEFINE_string("category", "widget", "Category folder name.")
_VALIDATION = flags.DEFINE_integer(
    "validation_images", 100, "Normal images in validation/good (0: none; training then "
    "holds data.val_fraction of train/good out). 100 let the 0.99 threshold quantile "
    "estimate a 1 % false-alarm rate.", lower_bound=0)


def main(argv):
    common.check_flags(argv, _OUTPUT_DIR, _CATEGORY)
    with common.quiet_import():  # TensorFlow loads: after the cheap checks
        from grdnet_tf.data import demo
    try:
        category_dir = demo.make_demo_dataset(_OUTPUT_DIR.value, seed=_SEED.value,
                                              category=_CATEGORY.value,
                                              n_validation=_VALIDATION.value)
    except common.USER_ERRORS as e:
        common.fail(str(e))
    print(category_dir)


def run():
    common.run_binary(main, __name__)


if __name__ == "__main__":
    run()
