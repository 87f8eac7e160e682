"""What the segmentator gets to compare: input, reconstruction, |X - X̂|, raw map, ground truth.

  .venv/bin/python bench/reconstruction_sheet.py --model_dir=RUN --data_dir=CATEGORY \
      --out=sheet.jpg [--images=cut/003,hole/005,contamination/007,good/001] [--gain=3]

One row per test image at the model's input size: the input X and the reconstruction X̂
(both times --gain, so that a dark part is visible), |X - X̂| scaled to its maximum, the
segmentator's raw map (scaled to its maximum, in the project's one colour map,
grdnet_tf/heatmap.py, as the evaluation overlays) and the ground-truth mask. Prints per image
the map's maximum, its maximum inside the ground truth and the mean |X - X̂| inside and
outside it. docs/results.md shows the tire sheet.
"""
import glob
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import cv2  # noqa: E402
import numpy as np  # noqa: E402

USAGE = __doc__.split("\n\n")[1]


def _rgb(image):
    return np.repeat(image, 3, -1) if image.shape[-1] == 1 else image


def _scaled(image):
    return image / max(float(image.max()), 1e-6)


def row(run, data_dir, name, gain):
    import tensorflow as tf

    from grdnet_tf import heatmap
    from grdnet_tf.data import io, preprocess

    folder, stem = name.split("/")
    size, channels = tuple(run.config.data.image_size), run.config.data.channels
    found = glob.glob(os.path.join(data_dir, "test", folder, f"{stem}.*"))
    if not found:
        raise FileNotFoundError(f"--images: no test/{folder}/{stem}.* in {data_dir}")
    x = preprocess.model_input(io.read_image(found[0], None, channels)[None], size, channels)
    x_hat, _ = run.model.generator.reconstruct(x)
    raw = run.model.segmentator(tf.concat([x, x_hat], -1)).numpy()[0, :, :, 0]
    gt = np.zeros(size, np.float32)
    masks = glob.glob(os.path.join(data_dir, "ground_truth", folder, f"{stem}*"))
    if masks:
        gt = cv2.resize(io.read_mask(masks[0]), size[::-1],
                        interpolation=cv2.INTER_NEAREST).astype(np.float32)

    x, x_hat = x.numpy()[0], x_hat.numpy()[0]
    diff = np.abs(x - x_hat).mean(-1)
    inside = f"{(raw * gt).max():.3f}" if gt.any() else "-"
    print(f"{name}: map max {raw.max():.3f}, max inside the defect {inside}, mean |X - X̂| "
          f"inside {diff[gt > 0].mean() if gt.any() else float('nan'):.4f} / outside "
          f"{diff[gt == 0].mean():.4f}")
    colours = heatmap.colorize(_scaled(raw))  # uint8 RGB
    tiles = [np.clip(_rgb(x) * gain, 0, 1), np.clip(_rgb(x_hat) * gain, 0, 1),
             _rgb(_scaled(diff)[..., None]), colours / 255.0, _rgb(gt[..., None])]
    return np.concatenate(tiles, axis=1)


def main(argv):
    options = {"--model_dir": None, "--data_dir": None, "--out": None,
               "--images": "cut/003,hole/005,contamination/007,good/001", "--gain": "3"}
    for arg in argv[1:]:
        key, _, value = arg.partition("=")
        if key not in options:
            sys.exit(f"error: unknown argument {arg}\n{USAGE}")
        options[key] = value
    if None in (options["--model_dir"], options["--data_dir"], options["--out"]):
        sys.exit(f"error: --model_dir, --data_dir and --out are required\n{USAGE}")
    from grdnet_tf import run_dir

    run = run_dir.load_for_inference(options["--model_dir"])
    rows = [row(run, options["--data_dir"], name, float(options["--gain"]))
            for name in options["--images"].split(",")]
    sheet = (np.concatenate(rows, axis=0) * 255).astype(np.uint8)
    if not cv2.imwrite(options["--out"], cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
        sys.exit(f"error: could not write --out={options['--out']}")
    print(options["--out"])


if __name__ == "__main__":
    main(sys.argv)
