"""Writes the embedded synthetic demo dataset (MVTec AD layout) and prints its folder.

    grdnet-demo-data --output_dir=demo_data [--seed=0] [--category=widget]
"""
from absl import app, flags

from grdnet_tf.data import demo

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", "demo_data", "Parent folder of the category folder.")
flags.DEFINE_integer("seed", 0, "Generator seed (same seed -> byte-identical files).")
flags.DEFINE_string("category", "widget", "Category folder name.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    print(demo.make_demo_dataset(FLAGS.output_dir, seed=FLAGS.seed, category=FLAGS.category))


def run():
    app.run(main)


if __name__ == "__main__":
    run()
