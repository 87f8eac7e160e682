"""Re-scores a trained run with every fixed smoothing window and with the window chosen on
validation data, to show what the per-model choice is worth (docs/results.md); with config
overrides, re-calibrates with them and scores the test split once.

  .venv/bin/python bench/rescore.py NAME MODEL_DIR DATA_DIR [--recalibrate] [--use_roi]
      [--set=KEY=VALUE]...

The run's own calibration.json says which window the validation split chose; with
--recalibrate (runs trained before the choice existed) the choice is made again now with
`grdnet_tf.calibration.calibrate` on the run's validation split, never the test split.
Every window's test-split metrics are reported side by side (the test split only reports:
it chooses nothing).

--set=KEY=VALUE (repeatable) overrides the run's config (e.g. --set=scoring.pixel_map=auto
--set=scoring.image_map=auto, or --set=data.roi_dir= for a run whose recorded ROI folder no
longer fits the data): the run is then re-calibrated with the overrides on its validation
split (--recalibrate is implied) and the test split is scored once with what calibration
chose (window, map sources, thresholds); the result holds the test metrics and the chosen
sources with their validation AUROCs. Writes bench/results/rescore_NAME.json and prints it.

--use_roi scores the test split once with its test ROIs as a hard mask of the maps
(grdnet-eval --use_roi; the masks of test_roi/, e.g. written by grdnet-roi without looking
at labels); calibration is unchanged (it uses the run's validation ROIs).
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
ONCE_KEYS = KEYS + ("pixel_auroc_roi", "aupro_roi", "image_f1_max", "false_alarm_rate", "tpr")
CALIBRATION_KEYS = ("smoothing_kernel", "smoothing_source", "smoothing_candidates",
                    "pixel_map", "pixel_map_source", "pixel_map_candidates", "image_map",
                    "image_map_source", "image_map_candidates", "residual_scale",
                    "threshold", "pixel_threshold", "pixel_f1_validation",
                    "image_baseline", "image_baseline_source", "image_baseline_candidates")
USAGE = ("usage: bench/rescore.py NAME MODEL_DIR DATA_DIR [--recalibrate] [--use_roi] "
         "[--set=KEY=VALUE]...")


def parse_flags(args):
    """(recalibrate, use_roi, {key: value}) of the flags after DATA_DIR; exits 2 on a bad
    flag."""
    recalibrate, use_roi, overrides = False, False, {}
    for arg in args:
        if arg == "--recalibrate":
            recalibrate = True
        elif arg == "--use_roi":
            use_roi = True
        elif arg.startswith("--set=") and "=" in arg[len("--set="):]:
            key, value = arg[len("--set="):].split("=", 1)
            overrides[key] = value
        else:
            print(f"error: bench/rescore.py: unknown or malformed flag {arg!r} (expected "
                  f"--recalibrate, --use_roi or --set=KEY=VALUE)\n{USAGE}", file=sys.stderr)
            sys.exit(2)
    return recalibrate, use_roi, overrides


def main(argv):
    if len(argv) < 4:
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    name, model_dir, data_dir = argv[1:4]
    recalibrate, use_roi, overrides = parse_flags(argv[4:])
    run = run_dir.load_for_inference(model_dir)
    cal = run.calibration or {}
    try:
        config = config_lib.with_overrides(run.config, {
            "scoring.smoothing_kernel": 0, "scoring.smoothing_auto": "validation",
            **overrides})
        config_lib.validate(config)
    except ValueError as error:
        print(f"error: bench/rescore.py --set: {error}", file=sys.stderr)
        sys.exit(2)
    if recalibrate or overrides or "smoothing_kernel" not in cal:
        from grdnet_tf.data import pipeline
        from grdnet_tf.training import train_lib
        # Only the validation images are decoded (as grdnet-calibrate does), and the
        # training images where the image baseline needs them.
        train_samples, val_samples = train_lib.index_data(config, data_dir)[:2]
        val_cache = train_lib.load_images(config, val_samples)
        cal = calibration.calibrate(
            run.model, config, val_cache, pipeline.load_textures(config), log_fn=print,
            baseline_cache=train_lib.load_baseline_images(config, train_samples))
    command = " ".join(["bench/rescore.py"] + argv[1:])
    if overrides or use_roi:
        ceiling.write_result(f"rescore_{name}", score_once(
            name, model_dir, run, config, cal, data_dir, overrides, command, use_roi))
        return
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
        "command": command,
    }
    ceiling.write_result(f"rescore_{name}", result)


def score_once(name, model_dir, run, config, cal, data_dir, overrides, command,
               use_roi=False):
    """The test split scored once with the re-calibrated run (its config with the
    overrides, the new calibration; test ROIs as a hard mask with `use_roi`): test
    metrics and what calibration chose."""
    run = dataclasses.replace(run, config=config, calibration=cal,
                              threshold=float(cal["threshold"]))
    scorer = run_scoring.Scorer(run, use_roi=use_roi)
    metrics = run_scoring.score_test_split(scorer, data_dir).metrics
    test = {k: metrics.get(k) for k in ONCE_KEYS}
    test["per_defect_image_auroc"] = metrics.get("per_defect_image_auroc")
    test["folders"] = metrics.get("folders")  # per test folder: count, flagged_rate
    print("test: " + " ".join(f"{k} {v:.4f}" for k, v in test.items()
                              if isinstance(v, float)), flush=True)
    return {"benchmark": f"rescore_{name}", "model_dir": model_dir,
            "checkpoint": run.checkpoint_path, "data_dir": data_dir, "overrides": overrides,
            "use_roi": use_roi,
            "scoring": {"kernel": scorer.params.kernel, "pixel_map": scorer.params.pixel_map,
                        "image_map": scorer.params.image_map,
                        "residual_scale": scorer.params.residual_scale},
            "calibration": {k: v for k, v in run_dir.calibration_record(cal).items()
                            if k in CALIBRATION_KEYS}, "test": test,
            "command": command}


if __name__ == "__main__":
    main(sys.argv)
