"""Rotation about the image centre in TensorFlow ops (the tensorflow-addons replacement of
docs/tf-notes.md), shared by the joint augmentation, the Perlin masks and the texture ops."""
import tensorflow as tf


def rotation_transform(angle, height, width):
    """The 8 projective-transform parameters of a rotation by ``angle`` (radians,
    counter-clockwise) about the image centre, mapping output to input coordinates."""
    cos, sin = tf.cos(angle), tf.sin(angle)
    h, w = float(height - 1), float(width - 1)
    x_offset = (w - (cos * w - sin * h)) / 2.0
    y_offset = (h - (sin * w + cos * h)) / 2.0
    zero = tf.zeros_like(cos)
    return tf.stack([cos, -sin, x_offset, sin, cos, y_offset, zero, zero])


def rotate(image, angle, interpolation="BILINEAR"):
    """Rotates ``[H, W, C]`` about its centre by ``angle`` radians, REFLECT fill (the
    tensorflow-addons replacement of docs/tf-notes.md).

    ``interpolation`` is "BILINEAR" (images) or "NEAREST" (masks: values stay binary).
    """
    height, width = image.shape[0], image.shape[1]
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None],
        transforms=rotation_transform(tf.cast(angle, tf.float32), height, width)[None],
        output_shape=tf.constant([height, width], tf.int32),
        fill_value=tf.constant(0.0, image.dtype),
        interpolation=interpolation,
        fill_mode="REFLECT")
    return out[0]
