"""How the synthetic anomalies of each synthesis setting look, measured on real training images.

  .venv/bin/python bench/synthesis_stats.py [--data=tire|magnetic_tile|PATH] [--samples=400]

For every variant in VARIANTS (the default synthesis, then each issue-18 change alone, then
all together) it draws `samples` training examples of the `cpu_small` pipeline and reports:

- mask area: median, 10th and 90th percentile fraction of the image (anomalous samples);
- intensity outliers: the fraction of anomalous pixels whose grey level lies outside the
  [0.5, 99.5] percentile range of the clean training pixels. A pixel outside that range can
  be flagged from X_n alone, without comparing with the reconstruction; the higher this
  fraction, the more the segmentator can learn a brightness rule instead of a defect rule;
- mean |X_n - X| inside the mask (grey levels 0..255).

Writes bench/results/synthesis_stats_<data>.json. Seconds per variant; no training.
"""
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402

import ceiling  # noqa: E402
from grdnet_tf import config as config_lib, keys  # noqa: E402

DATA = {"tire": os.path.join(os.path.dirname(REPO), "shared", "data", "mvtec3d_tire"),
        "magnetic_tile": os.path.join(os.path.dirname(REPO), "shared", "data",
                                      "magnetic_tile")}
CHANNELS = {"magnetic_tile": 1}
NEW = {"synthesis.texture_ops": 3, "synthesis.beta_min": 0.2,
       "synthesis.texture_builtin_weight": 1.0, "synthesis.texture_colour_weight": 0.5,
       "synthesis.texture_perlin_weight": 0.5, "synthesis.mask_area_min": 0.002,
       "synthesis.mask_area_max": 0.1}
OLD = {"synthesis.texture_ops": 0, "synthesis.beta_min": 0.5,
       "synthesis.texture_builtin_weight": 0.0, "synthesis.texture_colour_weight": 1.0,
       "synthesis.texture_perlin_weight": 1.0, "synthesis.mask_area_max": 0.0}
VARIANTS = {
    "old defaults": {},
    "+ texture ops (3 of 10)": {"synthesis.texture_ops": 3},
    "+ beta U(0.2, 1)": {"synthesis.beta_min": 0.2},
    "+ source odds (builtin 1, colour 0.5, perlin 0.5)": {
        k: NEW[k] for k in ("synthesis.texture_builtin_weight",
                            "synthesis.texture_colour_weight",
                            "synthesis.texture_perlin_weight")},
    "+ mask area log-U(0.2%, 10%)": {k: NEW[k] for k in ("synthesis.mask_area_min",
                                                          "synthesis.mask_area_max")},
    "all of the above": NEW,
    "all + intensity matching p=0.5": {**NEW, "synthesis.match_intensity_prob": 0.5},
    "all + intensity matching p=1": {**NEW, "synthesis.match_intensity_prob": 1.0},
}


def measure(config, cache, samples):
    from grdnet_tf.data import pipeline

    clean = cache.images.astype(np.float32)
    low, high = np.percentile(clean, [0.5, 99.5])
    ds = pipeline.train_dataset(config, cache, 8)
    areas, outliers, diffs = [], [], []
    for batch in ds.take(samples // 8):
        x = batch[keys.IMAGE].numpy() * 255
        xn = batch[keys.PERTURBED].numpy() * 255
        m = batch[keys.MASK].numpy()[..., 0] > 0
        for j in range(len(m)):
            if not m[j].any():
                continue
            areas.append(m[j].mean())
            grey = xn[j].mean(-1)[m[j]]
            outliers.append(np.mean((grey < low) | (grey > high)))
            diffs.append(np.abs(xn[j] - x[j]).mean(-1)[m[j]].mean())
    return {"anomalous": len(areas), "area_median": float(np.median(areas)),
            "area_p10": float(np.percentile(areas, 10)),
            "area_p90": float(np.percentile(areas, 90)),
            "intensity_outlier_fraction": float(np.mean(outliers)),
            "mean_abs_change": float(np.mean(diffs)), "clean_range": [float(low), float(high)]}


def main(argv):
    options = {"--data": "tire", "--samples": "400"}
    for arg in argv[1:]:
        key, _, value = arg.partition("=")
        if key not in options:
            sys.exit(f"error: unknown argument {arg}; usage: {__doc__.splitlines()[2].strip()}")
        options[key] = value
    name = options["--data"]
    data_dir = DATA.get(name, name)
    from grdnet_tf.data import mvtec, pipeline

    base = config_lib.load_config_file(os.path.join(REPO, "configs", "cpu_small.py"))
    base = config_lib.with_overrides(base, {"data.channels": CHANNELS.get(name, 3), **OLD})
    train, _ = mvtec.index_train(data_dir, val_fraction=0.1, seed=0)[:2]
    cache = pipeline.load_cache(train, base.data.image_size, base.data.channels)
    result = {"benchmark": f"synthesis_stats_{os.path.basename(name)}", "data_dir": data_dir,
              "samples": int(options["--samples"]), "variants": {}}
    for variant, overrides in VARIANTS.items():
        config = config_lib.with_overrides(base, overrides)
        result["variants"][variant] = measure(config, cache, int(options["--samples"]))
        print(variant, json.dumps(result["variants"][variant]), flush=True)
    ceiling.write_result(result["benchmark"], result)


if __name__ == "__main__":
    main(sys.argv)
