"""Re-scores a trained run with every fixed smoothing window and with the window chosen on
validation data, to show what the per-model choice is worth (docs/results.md).

  .venv/bin/python bench/rescore.py NAME MODEL_DIR DATA_DIR [--recalibrate]

The run's own calibration.json says which window the validation split chose; with
--recalibrate (runs trained before the choice existed) the choice is made again now with
`grdnet_tf.calibration.calibrate` on the run's validation split, never the test split.
Every window's test-split metrics are reported side by side (the test split only reports:
it chooses nothing). Writes bench/results/rescore_NAME.json and prints it.
"""
import dataclasses
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import ceiling  # noqa: E402
from grdnet_tf import calibration, config as config_lib, run_dir, run_scoring, scoring  # noqa

FIXED_AT_256 = (1, 5, 11, 21, 41, 61)
KEYS = ("image_auroc", "pixel_auroc", "aupro", "pixel_auroc_smoothed", "aupro_smoothed")


def main(argv):
    if len(argv) < 4:
        sys.exit("usage: bench/rescore.py NAME MODEL_DIR DATA_DIR [--recalibrate]")
    name, model_dir, data_dir = argv[1:4]
    recalibrate = "--recalibrate" in argv[4:]
    run = run_dir.load_for_inference(model_dir)
    cal = run.calibration or {}
    config = config_lib.with_overrides(run.config, {"scoring.smoothing_kernel": 0,
                                                    "scoring.smoothing_auto": "validation"})
    if recalibrate or "smoothing_kernel" not in cal:
        from grdnet_tf.training import train_lib
        data = train_lib.load_train_data(config, data_dir)
        cal = calibration.calibrate(run.model, config, data.val_cache, data.texture_cache,
                                    log_fn=print)
    base = scoring.ScoringParams.from_run(config, cal)
    chosen = int(cal["smoothing_kernel"])
    windows = scoring.candidate_kernels(base.image_size, FIXED_AT_256)
    rows = {}
    for kernel in sorted(set(windows) | {chosen}):
        scorer = run_scoring.Scorer(run, params=dataclasses.replace(base, kernel=kernel))
        metrics = run_scoring.score_test_split(scorer, data_dir).metrics
        rows[str(kernel)] = {k: metrics.get(k) for k in KEYS}
        rows[str(kernel)]["per_defect_image_auroc"] = metrics["per_defect_image_auroc"]
        print(f"window {kernel:3d}: " + " ".join(f"{k} {metrics.get(k) or float('nan'):.4f}"
                                                   for k in KEYS), flush=True)
    best_fixed = max(windows, key=lambda k: rows[str(k)]["image_auroc"] or 0.0)
    result = {
        "benchmark": f"rescore_{name}", "model_dir": model_dir, "data_dir": data_dir,
        "chosen_window": chosen, "chosen_by": cal.get("smoothing_source"),
        "validation_aurocs": cal.get("smoothing_candidates"),
        "paper_window_scaled": scoring.paper_kernel(base.image_size),
        "windows": rows, "best_fixed_window_on_test": best_fixed,
        "command": " ".join(["bench/rescore.py"] + argv[1:]),
    }
    ceiling.write_result(f"rescore_{name}", result)


if __name__ == "__main__":
    main(sys.argv)
