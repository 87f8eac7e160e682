"""grdnet_tf.data.defects: the calibration set's defect-like anomalies (spots, scratches,
patches) and `scoring.calibration_anomalies="defects"`."""
import math

import numpy as np
import pytest
import tensorflow as tf

from grdnet_tf import calibration, config as config_lib
from grdnet_tf.data import defects, pipeline

from helpers_config import load_tiny_config


def _image(height=64, width=64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0.2, 0.8, (height, width, 3)).astype(np.float32)


def _draw(image, seed, roi=None, **kwargs):
    out = defects.synthesize(tf.constant(image), tf.constant(seed, tf.int64),
                             None if roi is None else tf.constant(roi), **kwargs)
    return tuple(t.numpy() for t in out)


def _seed_of_kind(kind, image, start=0):
    for s in range(start, start + 200):
        if _draw(image, [s, 1])[2] == kind:
            return [s, 1]
    raise AssertionError(f"no draw of kind {kind} in 200 seeds")


@pytest.mark.parametrize("kind", [defects.SPOT, defects.SCRATCH, defects.PATCH])
def test_every_kind_changes_exactly_its_mask_and_repeats_per_seed(kind):
    image = _image()
    seed = _seed_of_kind(kind, image)
    perturbed, mask, got = _draw(image, seed)
    assert got == kind and mask.shape == (64, 64, 1) and set(np.unique(mask)) <= {0.0, 1.0}
    assert mask.sum() >= 1
    outside = mask[..., 0] == 0
    np.testing.assert_array_equal(perturbed[outside], image[outside])   # bit for bit
    assert np.abs(perturbed - image)[~outside].mean() > 0.01
    assert 0.0 <= perturbed.min() and perturbed.max() <= 1.0
    again = _draw(image, seed)
    np.testing.assert_array_equal(again[0], perturbed)
    other = _draw(image, [seed[0] + 1000, 1])
    assert not np.array_equal(other[1], mask)


def test_spot_is_darker_or_brighter_by_the_contrast_range():
    image = np.full((64, 64, 1), 0.5, np.float32)
    values = set()
    for s in range(300):
        perturbed, mask, kind = _draw(image, [s, 2])
        if kind != defects.SPOT:
            continue
        inside = perturbed[mask[..., 0] > 0]
        assert np.ptp(inside) < 1e-6                        # one shade per spot
        value = float(inside[0, 0])
        # dark: 0.5 (1 - d), bright: 0.5 + 0.5 d, d in [0.3, 0.7].
        assert 0.15 - 1e-6 <= value <= 0.35 + 1e-6 or 0.65 - 1e-6 <= value <= 0.85 + 1e-6
        values.add(value < 0.5)
    assert values == {True, False}


def test_ellipse_has_the_requested_area_and_contains_its_centre():
    for area, aspect, angle in ((40.0, 1.0, 0.0), (200.0, 2.5, 0.7), (1.0, 3.0, 1.2)):
        mask = defects.ellipse_mask(64, 64, tf.constant([30.0, 20.0]), tf.constant(area),
                                    tf.constant(aspect), tf.constant(angle)).numpy()
        assert mask[30, 20, 0] == 1
        if area >= 40:
            assert abs(mask.sum() - area) / area < 0.15


def test_scratch_is_a_thin_connected_arc_through_its_centre():
    mask = defects.scratch_mask(64, 64, tf.constant([32.0, 32.0]), tf.constant(30.0),
                                tf.constant(0.5), tf.constant(4.0),
                                tf.constant(0.3)).numpy()[..., 0]
    assert mask[32, 32] == 1
    # About length x width pixels (30 long, 1.5 wide at the 0.75 px floor): thin, not a blob.
    assert 30 <= mask.sum() <= 75
    import cv2
    count, _ = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    assert count == 2                                        # background + one arc


def test_patch_is_the_same_image_shifted_by_more_than_its_size():
    image = _image(seed=3)
    seed = _seed_of_kind(defects.PATCH, image)
    perturbed, mask, _ = _draw(image, seed)
    inside = mask[..., 0] > 0
    ys, xs = np.nonzero(inside)
    extent = max(np.ptp(ys), np.ptp(xs)) + 1
    found = [(dy, dx) for dy in range(-32, 33) for dx in range(-32, 33)
             if np.array_equal(np.roll(image, (dy, dx), axis=(0, 1))[inside], perturbed[inside])]
    assert len(found) == 1
    assert math.hypot(*found[0]) >= extent                  # not overlapping its own place


def test_half_the_centres_fall_inside_the_roi():
    image = _image()
    roi = np.zeros((64, 64, 1), np.float32)
    roi[40:48, 8:16] = 1.0                                   # 1.6 % of the image
    hits = 0
    draws = 200
    for s in range(draws):
        _, mask, _ = _draw(image, [s, 4], roi=roi)
        hits += bool((mask * roi).sum() > 0)
    # Inside with probability 1/2 (plus the rare uniform draws that touch it).
    assert 0.38 <= hits / draws <= 0.7


def test_areas_follow_the_given_range_and_a_bad_range_names_itself():
    image = _image()
    areas = []
    for s in range(300):
        _, mask, kind = _draw(image, [s, 5], area_range=(0.01, 0.01))
        if kind == defects.SPOT:
            areas.append(mask.sum())
    target = 0.01 * 64 * 64
    # A spot near the border is cut by it; the others have the area asked for.
    assert len(areas) > 50 and max(areas) <= 1.25 * target
    assert abs(np.median(areas) - target) <= 0.15 * target
    with pytest.raises(ValueError, match=r"area_range=\(0.0, 0.01\) must satisfy"):
        _draw(image, [0, 0], area_range=(0.0, 0.01))


def test_calibration_set_draws_the_defect_family(demo_category):
    """scoring.calibration_anomalies="defects": every draw has a defect-like anomaly of
    0.05-1 % of the image; the clean normals are the same as with the training family; an
    unknown family is a config error naming the key."""
    from grdnet_tf.models import build_grdnet
    from grdnet_tf.training import train_lib
    config = config_lib.with_overrides(load_tiny_config(), {
        "data.val_fraction": 0.3, "data.use_roi": False})
    data = train_lib.load_train_data(config, demo_category)
    model = build_grdnet(config)
    training = calibration.calibration_set(model, config, data.val_cache, repeats=2)
    family = config_lib.with_overrides(config, {"scoring.calibration_anomalies": "defects"})
    assert calibration.anomaly_family(family) == ("defects", (defects.AREA_MIN,
                                                              defects.AREA_MAX))
    cal_set = calibration.calibration_set(model, family, data.val_cache, repeats=2)
    height, width = config.data.image_size
    areas = cal_set.synthetic_masks.reshape(len(cal_set.synthetic_masks), -1).sum(1)
    assert len(areas) == 2 * len(data.val_cache)              # every draw has an anomaly
    assert areas.min() >= 1 and np.median(areas) < 0.02 * height * width
    np.testing.assert_array_equal(cal_set.clean_maps, training.clean_maps)
    lines = []
    calibration.calibrate(model, family, data.val_cache, log_fn=lines.append)
    assert "(defect-like: spots, scratches, patches; scoring.calibration_anomalies)" in lines[0]
    with pytest.raises(ValueError, match=r"scoring.calibration_anomalies='cutpaste' is not "
                                         r"allowed; choose one of \('training', 'defects'\)"):
        config_lib.with_overrides(config, {"scoring.calibration_anomalies": "cutpaste"})
    with pytest.raises(ValueError, match=r"family='cutpaste' is not allowed"):
        pipeline.validation_dataset(config, data.val_cache, 2, family="cutpaste")


def test_pixel_choices_on_their_own_family(demo_category):
    """scoring.pixel_calibration_anomalies: the pixel map and the pixel threshold are what
    calibrating wholly on that family chooses, the image map, window, threshold and span
    what the calibration_anomalies family chooses; "same" changes nothing; a bad value is a
    config error naming the key."""
    from grdnet_tf.models import build_grdnet
    from grdnet_tf.training import train_lib
    config = config_lib.with_overrides(load_tiny_config(), {
        "data.val_fraction": 0.3, "data.use_roi": False, "scoring.pixel_map": "auto",
        "scoring.image_map": "auto", "scoring.calibration_repeats": 2})
    data = train_lib.load_train_data(config, demo_category)
    model = build_grdnet(config)

    def calibrate(**scoring):
        lines = []
        result = calibration.calibrate(model, config_lib.with_overrides(
            config, {f"scoring.{k}": v for k, v in scoring.items()}), data.val_cache,
            log_fn=lines.append)
        return result, lines

    training, _ = calibrate()
    whole_defects, _ = calibrate(calibration_anomalies="defects")
    split, lines = calibrate(pixel_calibration_anomalies="defects")
    same, _ = calibrate(pixel_calibration_anomalies="same")
    assert training["pixel_map_candidates"] != whole_defects["pixel_map_candidates"]
    for key in ("pixel_map", "pixel_map_candidates", "pixel_threshold", "pixel_f1_validation"):
        assert split[key] == whole_defects[key], key
    for key in ("image_map", "image_map_candidates", "smoothing_kernel", "threshold", "scores",
                "normalization", "residual_scale", "num_synthetic_anomalies"):
        assert split[key] == training[key], key
    assert (split["calibration_anomalies"], split["pixel_calibration_anomalies"]) == (
        "training", "defects")
    assert split["pixel_num_synthetic_anomalies"] == whole_defects["num_synthetic_anomalies"]
    assert any("scoring.pixel_calibration_anomalies" in line for line in lines)
    same.pop("pixel_calibration_anomalies")
    assert same == {k: v for k, v in training.items() if k != "pixel_calibration_anomalies"}
    assert training["pixel_calibration_anomalies"] == "training"
    with pytest.raises(ValueError, match=r"scoring.pixel_calibration_anomalies='cutpaste' is "
                                         r"not allowed"):
        config_lib.with_overrides(config, {"scoring.pixel_calibration_anomalies": "cutpaste"})
