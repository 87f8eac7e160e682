"""What `make demo` runs: demo data -> training -> evaluation -> SavedModel export.

  python -m grdnet_tf.bin.demo --data_dir=demo_data --model_dir=demo_run

Each stage is the library function behind the corresponding command (grdnet-demo-data,
grdnet-train, grdnet-eval, grdnet-export); running it again resumes training where it
stopped and re-evaluates.
"""
import os
import time

from absl import flags

from grdnet_tf.bin import common

common.quiet_tensorflow()

_DATA_DIR = flags.DEFINE_string("data_dir", "demo_data", "Where the demo dataset is written.")
_MODEL_DIR = flags.DEFINE_string("model_dir", "demo_run", "Run directory.")
_CONFIG = common.define_config_flag("demo")
_EXPORT = flags.DEFINE_bool("export", True, "Export a SavedModel at the end.")


def main(argv):
    common.check_flags(argv, _DATA_DIR, _MODEL_DIR, _CONFIG)
    config = common.load_config(_CONFIG)
    with common.quiet_import():
        from grdnet_tf.data import demo
        from grdnet_tf.evaluation import eval_lib
        from grdnet_tf.serving import export_lib
        from grdnet_tf.training import train_lib

    # The demo is the four stages of the other binaries, each its library function.
    start = time.perf_counter()
    eval_dir = os.path.join(_MODEL_DIR.value, "eval")
    export_path = None
    try:
        category_dir = demo.make_demo_dataset(_DATA_DIR.value)
        summary = train_lib.train(config, category_dir, _MODEL_DIR.value)
        train_seconds = time.perf_counter() - start
        result = eval_lib.evaluate(_MODEL_DIR.value, category_dir, eval_dir)
        if _EXPORT.value:
            export_path = export_lib.export_run(_MODEL_DIR.value,
                                                os.path.join(_MODEL_DIR.value, "export"),
                                                overwrite=False)
    except common.USER_ERRORS as e:
        common.fail(str(e))
    outside = result["folders"].get("good_outside_roi", {}).get("flagged_rate")
    print("\n== GRD-Net demo ==")
    print(f"data:        {category_dir}")
    print(f"training:    {summary['epochs']} epochs, {summary['steps']} steps "
          f"({train_seconds / 60:.1f} min incl. data)")
    print(f"checkpoints: {os.path.join(_MODEL_DIR.value, 'checkpoints')} "
          f"(best: {os.path.join(_MODEL_DIR.value, 'best')})")
    print(f"TensorBoard: tensorboard --logdir {summary['logs_dir']}")
    print(f"evaluation:  {os.path.join(eval_dir, 'report.md')} (metrics.json, roc.png, "
          f"histogram.png, overlays/)")
    if export_path:
        print(f"SavedModel:  {export_path}")
    print(f"results:     {eval_lib.headline(result, eval_dir)}")
    if outside is not None:
        print(f"             defects outside the ROI flagged: {outside:.1%} of "
              f"test/good_outside_roi")


def run():
    common.run_binary(main, __name__, takes_config=True)


if __name__ == "__main__":
    run()
