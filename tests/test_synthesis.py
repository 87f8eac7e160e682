"""Synthetic anomalies and joint augmentation of one example (grdnet_tf.data.synthesis)."""
import math

import numpy as np
import pytest
import tensorflow as tf

from grdnet_tf.config import base_config, freeze
from grdnet_tf.data import geometry, perlin, synthesis
from helpers_images import random_images

SIZE = 32
BANK = tf.constant(random_images((4, SIZE, SIZE, 3), 0, np.uint8))
IMAGE = synthesis.to_float(BANK[0])


def params(**overrides):
    c = base_config()
    c.synthesis.update(overrides)
    return synthesis.SynthesisParams.from_config(freeze(c))


def seed(i):
    return perlin.fold(tf.constant([0, 0], tf.int64), i)


def run(p, i=0, image=IMAGE, **banks):
    return synthesis.synthesize(image, seed(i), p, **banks)


def test_no_anomaly_is_exact():
    perturbed, mask = run(params(anomaly_prob=0.0))
    np.testing.assert_array_equal(perturbed.numpy(), IMAGE.numpy())
    assert float(tf.reduce_max(mask)) == 0.0


@pytest.mark.parametrize("source", synthesis.SOURCE_NAMES)
def test_each_source_changes_only_masked_pixels(source):
    weights = {f"texture_{n}_weight": float(n == source) for n in synthesis.SOURCE_NAMES}
    p = params(anomaly_prob=1.0, **weights)
    banks = {"self_bank": BANK, "self_index": 0, "external_bank": BANK[2:],
             "builtin_bank": BANK[1:3]}
    for i in range(3):
        perturbed, mask = run(p, i, **banks)
        x, xn, m = IMAGE.numpy(), perturbed.numpy(), mask.numpy()
        assert xn.shape == x.shape and m.shape == (SIZE, SIZE, 1)
        assert set(np.unique(m)) == {0.0, 1.0}
        assert 0.0 <= xn.min() and xn.max() <= 1.0
        outside = np.broadcast_to(m == 0, x.shape)
        np.testing.assert_array_equal(xn[outside], x[outside])  # bit for bit
        changed = np.any(xn != x, axis=-1)
        assert changed[m[..., 0] == 1].mean() > 0.5


def test_unavailable_sources():
    p = params(texture_colour_weight=0.0, texture_perlin_weight=0.0)
    with pytest.raises(ValueError, match="weight 0"):
        run(p)  # only self/external left, neither given
    # External weight is ignored without textures; self needs a bank.
    run(params(anomaly_prob=1.0, texture_colour_weight=0.0, texture_perlin_weight=0.0),
        self_bank=BANK, self_index=1)


def test_self_texture_is_another_image():
    for i in range(8):
        tex = synthesis.bank_texture(BANK, seed(i), exclude=tf.constant(1, tf.int64)).numpy()
        own = synthesis.to_float(BANK[1]).numpy()
        # A circular shift of image 1 would contain the same multiset of pixels.
        assert not np.array_equal(np.sort(tex.ravel()), np.sort(own.ravel()))


def test_deterministic_and_seed_dependent():
    p = params(anomaly_prob=1.0)
    a = run(p, 5, self_bank=BANK, self_index=0)
    b = tf.function(lambda: run(p, 5, self_bank=BANK, self_index=0))()
    c = run(p, 6, self_bank=BANK, self_index=0)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.numpy(), y.numpy())
    assert not np.array_equal(a[1].numpy(), c[1].numpy())


def test_anomaly_frequency_and_area():
    q = 0.5
    p = params(anomaly_prob=q)

    def fn(i):
        return run(p, i, self_bank=BANK, self_index=0)[1]

    masks = np.stack(list(tf.data.Dataset.range(200).map(fn).as_numpy_iterator()))
    has = masks.reshape(200, -1).max(axis=1) > 0
    assert abs(has.mean() - q) < 0.1  # binomial sd 0.035
    area = masks[has].mean()
    assert 0.01 < area < 0.25


def test_grayscale_image():
    gray = synthesis.to_float(BANK[:, :, :, :1])
    for i in range(4):
        perturbed, mask = run(params(anomaly_prob=1.0), i, image=gray[0],
                              self_bank=BANK[:, :, :, :1], self_index=0)
        assert perturbed.shape == (SIZE, SIZE, 1) and mask.shape == (SIZE, SIZE, 1)


def test_rotate_matches_rot90_and_identity():
    x = np.arange(25, dtype=np.float32).reshape(5, 5, 1)
    r = geometry.rotate(tf.constant(x), math.pi / 2, "NEAREST").numpy()
    np.testing.assert_array_equal(r, np.rot90(x, 1))  # counter-clockwise about the centre
    y = np.arange(35, dtype=np.float32).reshape(5, 7, 1)
    np.testing.assert_array_equal(geometry.rotate(tf.constant(y), 0.0).numpy(), y)


def test_geometry_identity_and_joint_transform():
    roi = tf.constant(np.round(random_images((SIZE, SIZE, 1), 1)))
    x, r = synthesis.augment_geometry(IMAGE, roi, seed(0), params(rotation_deg=0.0))
    np.testing.assert_array_equal(x.numpy(), IMAGE.numpy())
    np.testing.assert_array_equal(r.numpy(), roi.numpy())
    # An off-centre disk as image and as ROI must end up at the same place.
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    marker = tf.constant(((yy - 10) ** 2 + (xx - 12) ** 2 < 36)[:, :, None], tf.float32)
    image = tf.concat([marker, marker, marker], axis=-1)
    p = params(rotation_deg=90.0, flip_horizontal=True, flip_vertical=True)
    moved = 0
    for i in range(6):
        x, r = synthesis.augment_geometry(image, marker, seed(i), p)
        moved += not np.array_equal(r.numpy(), marker.numpy())
        assert set(np.unique(r.numpy())) <= {0.0, 1.0}
        # Bilinear vs nearest differ only at the disk border.
        assert np.mean((x.numpy()[:, :, 0] > 0.5) != r.numpy()[:, :, 0]) < 0.02
    assert moved >= 5


def test_mask_area_rule_gives_the_drawn_fraction():
    # min = max pins the fraction: exactly round(a * H * W) pixels (the noise has no ties).
    p = params(anomaly_prob=1.0, mask_area_min=0.02, mask_area_max=0.02)
    for i in range(6):
        _, mask = run(p, i, self_bank=BANK, self_index=0)
        assert int(mask.numpy().sum()) == round(0.02 * SIZE * SIZE)
    p = params(anomaly_prob=1.0, mask_area_min=0.002, mask_area_max=0.2)
    areas = [float(run(p, i, self_bank=BANK, self_index=0)[1].numpy().mean())
             for i in range(40)]
    assert min(areas) >= 1 / SIZE ** 2 and max(areas) <= 0.2 + 1e-6
    # log-uniform: the median lies near the geometric mean 0.02, far below the mean 0.1.
    assert 0.008 < np.median(areas) < 0.05


@pytest.mark.parametrize("area_max", [0.0, 0.05])
def test_in_roi_prob_confines_masks(area_max):
    roi = np.zeros((SIZE, SIZE, 1), np.float32)
    roi[8:24, 4:20] = 1.0
    roi = tf.constant(roi)
    inside = params(anomaly_prob=1.0, in_roi_prob=1.0, mask_area_max=area_max)
    anywhere = params(anomaly_prob=1.0, in_roi_prob=0.0, mask_area_max=area_max)
    outside_pixels = 0
    for i in range(12):
        _, mask = run(inside, i, self_bank=BANK, self_index=0, roi=roi)
        m = mask.numpy()
        assert m.sum() > 0 and m[roi.numpy() == 0].sum() == 0
        outside_pixels += run(anywhere, i, self_bank=BANK, self_index=0,
                              roi=roi)[1].numpy()[roi.numpy() == 0].sum()
    assert outside_pixels > 0
    # An empty ROI cannot confine anything: the mask falls anywhere, never empty.
    _, mask = run(inside, 0, self_bank=BANK, self_index=0, roi=tf.zeros_like(roi))
    assert mask.numpy().sum() > 0


def test_texture_ops_change_only_the_texture():
    plain = params(anomaly_prob=1.0, texture_colour_weight=0.0, texture_perlin_weight=0.0)
    augmented = params(anomaly_prob=1.0, texture_colour_weight=0.0, texture_perlin_weight=0.0,
                       texture_ops=3)
    differ = 0
    for i in range(6):
        a, ma = run(plain, i, self_bank=BANK, self_index=0)
        b, mb = run(augmented, i, self_bank=BANK, self_index=0)
        np.testing.assert_array_equal(ma.numpy(), mb.numpy())  # same mask
        outside = np.broadcast_to(ma.numpy() == 0, a.shape)
        np.testing.assert_array_equal(b.numpy()[outside], IMAGE.numpy()[outside])
        differ += not np.array_equal(a.numpy(), b.numpy())
    assert differ >= 5


def test_match_intensity_matches_the_moments_under_the_mask():
    mask = np.zeros((SIZE, SIZE, 1), np.float32)
    mask[4:20, 6:26] = 1.0
    image = IMAGE * 0.2 + 0.1  # dark, low contrast
    texture = synthesis.to_float(BANK[2])
    matched = synthesis.match_intensity(texture, image, tf.constant(mask)).numpy()
    inside = mask[..., 0] > 0
    for c in range(3):
        np.testing.assert_allclose(matched[..., c][inside].mean(),
                                   image.numpy()[..., c][inside].mean(), atol=2e-3)
        np.testing.assert_allclose(matched[..., c][inside].std(),
                                   image.numpy()[..., c][inside].std(), rtol=0.02)
    # Still the texture's structure: perfectly correlated with it under the mask.
    assert np.corrcoef(matched[..., 0][inside], texture.numpy()[..., 0][inside])[0, 1] > 0.999
    p = params(anomaly_prob=1.0, match_intensity_prob=1.0, texture_colour_weight=0.0,
               texture_perlin_weight=0.0)
    perturbed, m = run(p, 0, image=image, self_bank=BANK, self_index=0)
    outside = np.broadcast_to(m.numpy() == 0, image.shape)
    np.testing.assert_array_equal(perturbed.numpy()[outside], image.numpy()[outside])
