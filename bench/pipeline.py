"""Benchmark: images/s of the training input pipeline (grdnet_tf.data.pipeline).

    .venv/bin/python bench/pipeline.py [--batches=50] [--warmup=5]

256x256 RGB, global batch 8, paper synthesis settings (rotation +-90, q = 0.75), on the
demo dataset (generated into a temporary folder) and, if present, on
/work/shared/data/mvtec3d_tire (read in place). Times the decoded-cache build separately,
then iterates ``--warmup`` batches and times ``--batches`` more. Prints one JSON line per
dataset and a summary JSON line last; the summary goes to bench/results/pipeline.json.
"""
import json
import os
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from grdnet_tf.config import base_config  # noqa: E402
from grdnet_tf.data import demo, mvtec, pipeline  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("batches", 50, "Timed batches.")
flags.DEFINE_integer("warmup", 5, "Untimed batches first (tracing, autotuning).")
flags.DEFINE_integer("batch_size", 8, "Global batch size.")
flags.DEFINE_integer("image_size", 256, "Square image size.")
flags.DEFINE_string("tire_dir", "/work/shared/data/mvtec3d_tire", "Optional real category.")

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "pipeline.json")


def measure(name, category_dir):
    config = base_config()
    config.data.image_size = (FLAGS.image_size, FLAGS.image_size)
    start = time.perf_counter()
    train, _ = mvtec.index_train(category_dir, config.data.roi_dir, config.data.val_fraction,
                                 config.seed)
    cache = pipeline.load_cache(train, config.data.image_size, config.data.channels)
    cache_seconds = time.perf_counter() - start

    start = time.perf_counter()
    iterator = iter(pipeline.train_dataset(config, cache, FLAGS.batch_size))
    for _ in range(FLAGS.warmup):
        next(iterator)
    warmup_seconds = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(FLAGS.batches):
        next(iterator)
    seconds = time.perf_counter() - start
    result = {
        "dataset": name, "train_images": len(cache),
        "images_per_second": round(FLAGS.batches * FLAGS.batch_size / seconds, 1),
        "seconds_per_batch": round(seconds / FLAGS.batches, 4),
        "cache_seconds": round(cache_seconds, 2), "first_batches_seconds": round(warmup_seconds, 2),
    }
    print(json.dumps(result), flush=True)
    return result


def main(argv):
    del argv
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        results.append(measure("demo", demo.make_demo_dataset(tmp)))
    if FLAGS.tire_dir and os.path.isdir(FLAGS.tire_dir):
        results.append(measure("mvtec3d_tire", FLAGS.tire_dir))
    summary = {
        "benchmark": "pipeline",
        "images_per_second": results[0]["images_per_second"],
        "image_size": FLAGS.image_size, "batch_size": FLAGS.batch_size,
        "batches": FLAGS.batches, "cpu_count": os.cpu_count(),
        "load_average": round(os.getloadavg()[0], 2),
        "datasets": results,
    }
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS + ".tmp", "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    os.replace(RESULTS + ".tmp", RESULTS)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    app.run(main)
