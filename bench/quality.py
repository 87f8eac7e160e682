"""Quality benchmark: train, evaluate and summarise one of the documented settings.

  .venv/bin/python bench/quality.py demo            # demo data, configs/demo.py, ROI on
  .venv/bin/python bench/quality.py demo_no_roi     # the same with whole-image ROIs
  .venv/bin/python bench/quality.py tire            # ../shared/data/mvtec3d_tire, cpu_small
  .venv/bin/python bench/quality.py demo_small      # demo data with cpu_small (128 px)
  .venv/bin/python bench/quality.py magnetic_tile   # ../shared/data/magnetic_tile, cpu_small, gray
  .venv/bin/python bench/quality.py tire_roi        # tire with grdnet-roi masks, no rotation
  .venv/bin/python bench/quality.py magnetic_tile_roi  # magnetic tile with grdnet-roi masks

Each run trains from scratch into runs/quality_<name>/ (deleted first), evaluates the test
split with grdnet-eval's library function, and writes bench/results/quality_<name>.json
(last line of stdout too). `tire` logs test metrics every 2 epochs (never used for model or
threshold selection) and draws the learning curve to docs/learning_curve_tire.png.
Extra `--config.KEY=VALUE` style overrides can follow the name, e.g. train.epochs=10.

  .venv/bin/python bench/quality.py suite [--seeds=0,1,2] [--settings=...] [KEY=VALUE ...]

runs every setting of SUITE with every seed (tag `_seed<k>`, resumable: existing result
JSONs are reused), then writes bench/results/quality_suite.json with mean ± std (sample
std over seeds) of image AUROC, pixel AUROC (raw map), AUPRO, training minutes and images/s,
and prints that as a markdown table (docs/results.md).
"""
import json
import os
import shutil
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from absl import logging  # noqa: E402

import ceiling  # noqa: E402
from grdnet_tf import config as config_lib  # noqa: E402

SETTINGS = {
    "demo": dict(config="demo.py", data="demo", overrides={"train.eval_every_epochs": 10}),
    "demo_no_roi": dict(config="demo.py", data="demo", overrides={"data.use_roi": False}),
    # The attention ablation's demo setting: configs/cpu_small.py (128 px, the demo images'
    # own size) with the demo config's learning rate and 60 epochs.
    "demo_small": dict(config="cpu_small.py", data="demo",
                       overrides={"optimizer.learning_rate": 1e-3, "train.epochs": 60,
                                  "train.eval_every_epochs": 10}),
    "tire": dict(config="cpu_small.py", data=os.path.join(os.path.dirname(REPO), "shared",
                                                           "data", "mvtec3d_tire"),
                 overrides={"train.eval_every_epochs": 2}),
    "magnetic_tile": dict(config="cpu_small.py",
                          data=os.path.join(os.path.dirname(REPO), "shared", "data",
                                            "magnetic_tile"),
                          # 10 epochs of its 600 images = 750 steps, the step budget of
                          # tire's 30 epochs (780), within issue 18's 30 training minutes.
                          overrides={"data.channels": 1, "train.epochs": 10}),
}
# The settings with ROI masks written by grdnet-roi (docs/roi.md's rules for these two
# datasets) into runs/roi_data/<data>/: a mirror of the category whose image folders are
# symlinks and whose train/roi, validation/roi and test_roi/ are the written masks, so the
# shared data stay read-only and a fresh machine rebuilds the same masks.
ROI_RULES = {
    "mvtec3d_tire": dict(features=("border_distance", "local_contrast"), threshold="triangle",
                         blur_sigma=3.0, open_radius=3, close_radius=25, convex_hull=True,
                         margin=10),
    "magnetic_tile": dict(features=("grey",), polarity="bright", threshold="fixed", level=25.0,
                          blur_sigma=2.0, open_radius=3, keep=1, margin=2),
}
SETTINGS["tire_roi"] = dict(SETTINGS["tire"], roi="mvtec3d_tire", overrides={
    **SETTINGS["tire"]["overrides"],
    # A fixed-pose part (docs/method.md, orientation): no rotation of the normals.
    "synthesis.rotation_deg": 0.0})
SETTINGS["magnetic_tile_roi"] = dict(SETTINGS["magnetic_tile"], roi="magnetic_tile")
SUITE = ("demo", "tire_roi", "magnetic_tile_roi")  # the settings of `suite` (issue 18)


def roi_data_dir(category_dir, name):
    """runs/roi_data/<name>/: symlinks to ``category_dir``'s image folders plus the ROI
    masks of ROI_RULES[name] (written once; kept masks are reused)."""
    from grdnet_tf import roi

    mirror = os.path.join(REPO, "runs", "roi_data", name)
    os.makedirs(mirror, exist_ok=True)
    for top in sorted(os.listdir(category_dir)):
        source = os.path.join(category_dir, top)
        if not os.path.isdir(source):
            continue
        if top in ("train", "validation"):  # <split>/<class>/ images, <split>/roi/ masks
            for sub in sorted(os.listdir(source)):
                link = os.path.join(mirror, top, sub)
                if sub != "roi" and not os.path.lexists(link):
                    os.makedirs(os.path.dirname(link), exist_ok=True)
                    os.symlink(os.path.join(source, sub), link)
        elif not os.path.lexists(os.path.join(mirror, top)):
            os.symlink(source, os.path.join(mirror, top))
    splits = tuple(s for s in ("train", "validation", "test")
                   if os.path.isdir(os.path.join(category_dir, s)))
    summary = roi.write_rois(mirror, splits=splits, rule=roi.ForegroundRule(**ROI_RULES[name]))
    logging.info("ROI masks in %s: written %s, kept %s", mirror, summary["written"],
                 summary["kept"])
    return mirror


def _parameter_counts(config):
    """Trainable + non-trainable parameters of each network of a config."""
    from grdnet_tf.models import build_grdnet

    model = build_grdnet(config)
    counts = {net.name: net.count_params()
              for net in (model.generator, model.discriminator, model.segmentator)}
    counts["total"] = sum(counts.values())
    return counts


def run_setting(name, extra_overrides, tag=""):
    """Trains and evaluates one setting into runs/quality_<name><tag>/ and writes
    bench/results/quality_<name><tag>.json; returns the result dict."""
    setting = SETTINGS[name]
    run_name = f"{name}{tag}"
    overrides = {**setting["overrides"], **extra_overrides}
    config = config_lib.with_overrides(config_lib.load_config_file(
        os.path.join(REPO, "configs", setting["config"])), overrides)
    overrides = {key: config_lib.get_value(config, key) for key in overrides}

    from grdnet_tf.data import demo
    from grdnet_tf.evaluation import eval_lib, plots
    from grdnet_tf.training import train_lib

    logging.set_verbosity(logging.INFO)
    run_dir = os.path.join(REPO, "runs", f"quality_{run_name}")
    shutil.rmtree(run_dir, ignore_errors=True)
    data_dir = setting["data"]
    if data_dir == "demo":
        data_dir = demo.make_demo_dataset(os.path.join(REPO, "runs", f"demo_data{tag}"))
    if setting.get("roi"):
        data_dir = roi_data_dir(data_dir, setting["roi"])
    start = time.perf_counter()
    summary = train_lib.train(config, data_dir, run_dir)
    train_minutes = (time.perf_counter() - start) / 60
    metrics = eval_lib.evaluate(run_dir, data_dir, os.path.join(run_dir, "eval"))
    parameters = _parameter_counts(config)
    with open(os.path.join(run_dir, "history.json")) as f:
        history = json.load(f)
    logged = [h for h in history if h.get("test_image_auroc") is not None]
    curve = {k: [h.get(k) for h in logged]
             for k in ("test_image_auroc", "test_pixel_auroc", "test_aupro")}
    if logged:
        plots.learning_curve_png([h["epoch"] for h in logged], curve,
                                 os.path.join(REPO, "docs", f"learning_curve_{run_name}.png"),
                                 title=f"{name}: test AUROC against epoch (logged only)")
    background = [f for f in metrics["folders"] if f.startswith("good_")]
    result = {
        "benchmark": f"quality_{run_name}", "setting": name, "seed": int(config.seed),
        "config": setting["config"], "overrides": overrides,
        "data_dir": data_dir, "epochs": summary["epochs"], "steps": summary["steps"],
        "train_minutes": round(train_minutes, 2), "load_avg_1min": os.getloadavg()[0],
        "run_images_per_second": round(  # whole run: validation, checkpoints, logged evals
            summary["steps"] * config.train.batch_size / (60 * train_minutes), 2),
        "parameters": parameters,
        "image_auroc": metrics["image_auroc"], "pixel_auroc": metrics["pixel_auroc"],
        "aupro": metrics["aupro"], "image_f1_max": metrics["image_f1_max"],
        "pixel_maps": metrics.get("pixel_maps", "smoothed"),
        "pixel_auroc_smoothed": metrics.get("pixel_auroc_smoothed"),
        "aupro_smoothed": metrics.get("aupro_smoothed"),
        "smoothing_kernel": metrics.get("smoothing_kernel"),
        "calibration": {k: v for k, v in (summary.get("calibration") or {}).items()
                        if k != "scores"},
        "pixel_auroc_roi": metrics.get("pixel_auroc_roi"),
        "threshold": metrics["threshold"], "false_alarm_rate": metrics.get("false_alarm_rate"),
        # Defect-free images whose only "defects" lie outside the ROI (demo: good_outside_roi)
        # flagged at the calibrated threshold.
        "background_only_flagged": (
            sum(round(metrics["folders"][f]["flagged_rate"] * metrics["folders"][f]["count"])
                for f in background) if background else None),
        "folders": metrics["folders"], "per_defect_image_auroc":
            metrics["per_defect_image_auroc"],
        "learning_curve": {"epoch": [h["epoch"] for h in logged], **curve},
        "command": " ".join(["bench/quality.py", name] + [f"{k}={v}" for k, v in
                                                           extra_overrides.items()]),
    }
    ceiling.write_result(f"quality_{run_name}", result)
    return result


SUMMARY_KEYS = ("image_auroc", "pixel_auroc", "aupro", "train_minutes",
                "run_images_per_second")


def summarise(results):
    """mean and (sample) std over seeds of SUMMARY_KEYS, and the background-only count."""
    import numpy as np

    summary = {"seeds": [r["seed"] for r in results], "n": len(results)}
    for key in SUMMARY_KEYS:
        values = np.array([r[key] for r in results], np.float64)
        summary[key] = {"mean": round(float(values.mean()), 4),
                        "std": round(float(values.std(ddof=1)) if len(values) > 1 else 0.0, 4),
                        "values": [round(float(v), 4) for v in values]}
    flagged = [r.get("background_only_flagged") for r in results]
    summary["background_only_flagged"] = None if None in flagged else flagged
    return summary


def markdown_table(suite):
    rows = ["| setting | seeds | image AUROC | pixel AUROC (raw) | AUPRO | train min | img/s |",
            "|---|---|---|---|---|---|---|"]
    for name, s in suite.items():
        cells = [f"{s[k]['mean']:.3f} ± {s[k]['std']:.3f}" for k in SUMMARY_KEYS[:3]]
        cells += [f"{s[k]['mean']:.1f}" for k in SUMMARY_KEYS[3:]]
        rows.append(f"| {name} | {s['n']} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def run_suite(names, seeds, extra_overrides, tag):
    """Every setting of ``names`` with every seed (a result JSON that already exists for a
    setting, seed and tag is reused, so an interrupted suite resumes); writes
    bench/results/quality_suite<tag>.json and prints a markdown table."""
    suite = {}
    for name in names:
        results = []
        for seed in seeds:
            run_tag = f"{tag}_seed{seed}"
            path = os.path.join(ceiling.RESULTS_DIR, f"quality_{name}{run_tag}.json")
            if os.path.exists(path):
                with open(path) as f:
                    results.append(json.load(f))
                continue
            results.append(run_setting(name, {**extra_overrides, "seed": seed}, run_tag))
        suite[name] = summarise(results)
    overrides = {k: str(v) for k, v in extra_overrides.items()}
    ceiling.write_result(f"quality_suite{tag}", {"benchmark": f"quality_suite{tag}",
                                                  "overrides": overrides, "settings": suite,
                                                  "table": markdown_table(suite)})
    print(markdown_table(suite))


def main(argv):
    usage = (f"usage: bench/quality.py {{{','.join(SETTINGS)}}} [KEY=VALUE ...]\n"
             f"       bench/quality.py suite [--seeds=0,1,2] [--settings=demo,tire,magnetic_tile]"
             " [KEY=VALUE ...]")
    if len(argv) < 2 or argv[1] not in (*SETTINGS, "suite"):
        sys.exit(usage)
    tag = os.environ.get("QUALITY_TAG", "")  # separate run folders for parallel experiments
    args = argv[2:]
    options = {"--seeds": "0,1,2", "--settings": ",".join(SUITE)}
    for arg in list(args):
        key, _, value = arg.partition("=")
        if key in options:
            options[key] = value
            args.remove(arg)
    try:
        extra = config_lib.parse_overrides(args)
        if argv[1] != "suite":
            run_setting(argv[1], extra, tag)
            return
        names = options["--settings"].split(",")
        unknown = [n for n in names if n not in SETTINGS]
        if unknown:
            sys.exit(f"error: --settings: unknown {unknown}; known: {', '.join(SETTINGS)}")
        seeds = [int(v) for v in options["--seeds"].split(",")]
        run_suite(names, seeds, extra, tag)
    except ValueError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main(sys.argv)
