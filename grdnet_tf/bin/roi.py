"""grdnet-roi: writes ROI masks (train/roi/<stem>.png, ...) from a foreground rule or one
template mask, a preview sheet per split and roi_preview/roi.json; see grdnet_tf/roi.py and
docs/roi.md.

    grdnet-roi --data_dir=CATEGORY [--output_dir=ROOT] [--splits=train,validation,test]
               [--feature=grey|border_distance|local_contrast[,...]]
               [--polarity=auto|bright|dark] [--threshold=otsu|triangle|fixed [--level=L]]
               [--blur_sigma=2] [--open_radius=0] [--close_radius=0] [--keep=1]
               [--[no]fill_holes] [--convex_hull] [--margin=0] [--overwrite] [--preview_count=24]
    grdnet-roi --data_dir=CATEGORY --template=MASK.png [--output_dir=ROOT] ...

Existing masks are kept unless --overwrite; nothing is written when an image is unreadable
or its ROI comes out empty.
"""
from absl import flags

from grdnet_tf import choices
from grdnet_tf.bin import common

_DATA_DIR = flags.DEFINE_string("data_dir", None, "MVTec-style category folder (only read).")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "", "Root of the written tree "
                                  "(<root>/train/roi, <root>/validation/roi, "
                                  "<root>/test_roi/<folder>); default: --data_dir.")
_SPLITS = flags.DEFINE_list("splits", "train,validation",
                            f"Splits to write, of {','.join(choices.ROI_SPLITS)}; a missing "
                            "validation folder is skipped.")
_TEMPLATE = flags.DEFINE_string("template", None, "One mask file (white = ROI) used for "
                                "every image, resized (nearest); excludes the rule flags.")
_THRESHOLD = flags.DEFINE_enum("threshold", "otsu", choices.ROI_THRESHOLDS,
                               "Threshold of each feature: per image (otsu, triangle) or "
                               "fixed (--level).")
_LEVEL = flags.DEFINE_float("level", 0.0, "Feature value of --threshold=fixed, in [0, 255).")
_FEATURE = flags.DEFINE_list("feature", "grey",
                             "What is thresholded, one or more (foregrounds united) of: grey "
                             "(by --polarity), border_distance (colour distance from the "
                             "border's median colour), local_contrast (grey std in a window "
                             "of --blur_sigma).")
_POLARITY = flags.DEFINE_enum("polarity", "auto", choices.ROI_POLARITIES,
                              "--feature=grey: object brighter or darker than the "
                              "background, or auto (decided from the image border).")
_BLUR_SIGMA = flags.DEFINE_float("blur_sigma", 2.0, "Gaussian sigma (px) of the feature; "
                                 "0: none.")
_OPEN_RADIUS = flags.DEFINE_integer("open_radius", 0, "Opening radius (px): removes specks.")
_CLOSE_RADIUS = flags.DEFINE_integer("close_radius", 0, "Closing radius (px): bridges gaps.")
_KEEP = flags.DEFINE_integer("keep", 1, "Keep the N largest components; 0: all.")
_FILL_HOLES = flags.DEFINE_bool("fill_holes", True, "Fill background regions enclosed by "
                                "the ROI.")
_CONVEX_HULL = flags.DEFINE_bool("convex_hull", False, "Replace each kept component by its "
                                 "convex hull (for convex parts).")
_MARGIN = flags.DEFINE_integer("margin", 0, "Dilate the ROI by this many pixels.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace existing <stem>.png masks "
                               "(otherwise they are kept).")
_PREVIEW_DIR = flags.DEFINE_string("preview_dir", "", "Folder of the preview sheets and "
                                   "roi.json; default: <output root>/roi_preview.")
_PREVIEW_COUNT = flags.DEFINE_integer("preview_count", 24, "Images per preview sheet.")

_RULE_FLAGS = (_FEATURE, _POLARITY, _THRESHOLD, _LEVEL, _BLUR_SIGMA, _OPEN_RADIUS,
               _CLOSE_RADIUS, _KEEP, _FILL_HOLES, _CONVEX_HULL, _MARGIN)


def main(argv):
    common.check_flags(argv, (_DATA_DIR, "an MVTec-style category folder"))
    from grdnet_tf import roi
    rule = None
    if _TEMPLATE.value is not None:
        rule_flags = [f"--{f.name}" for f in _RULE_FLAGS if flags.FLAGS[f.name].present]
        if rule_flags:
            common.fail(f"--template excludes the rule flags {', '.join(rule_flags)}")
    else:
        rule = roi.ForegroundRule(
            features=tuple(_FEATURE.value), polarity=_POLARITY.value,
            threshold=_THRESHOLD.value, level=_LEVEL.value,
            blur_sigma=_BLUR_SIGMA.value, open_radius=_OPEN_RADIUS.value,
            close_radius=_CLOSE_RADIUS.value, keep=_KEEP.value,
            fill_holes=_FILL_HOLES.value, convex_hull=_CONVEX_HULL.value,
            margin=_MARGIN.value)
    try:
        summary = roi.write_rois(_DATA_DIR.value, output_dir=_OUTPUT_DIR.value,
                                 splits=tuple(_SPLITS.value), rule=rule,
                                 template_path=_TEMPLATE.value, overwrite=_OVERWRITE.value,
                                 preview_dir=_PREVIEW_DIR.value,
                                 preview_count=_PREVIEW_COUNT.value)
    except common.USER_ERRORS as e:
        common.fail(str(e))
    for group, written in summary["written"].items():
        share = summary["roi_share_mean_min_max"][group]
        print(f"{group}: {written} written, {summary['kept'][group]} kept; ROI "
              f"{100 * share[0]:.1f}% of the image (min {100 * share[1]:.1f}%, max "
              f"{100 * share[2]:.1f}%)")
    for folder, entry in summary["gt_coverage"].items():
        print(f"ground truth inside the test ROI, {folder}: {100 * entry['fraction']:.2f}% "
              f"of {entry['total']} px in {entry['images']} images (worst image "
              f"{100 * entry['worst']:.1f}%)")
    for split, path in summary["previews"].items():
        print(f"preview {split}: {path}")


def run():
    common.run_binary(main, __name__)


if __name__ == "__main__":
    run()
