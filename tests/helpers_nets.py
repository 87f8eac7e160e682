"""Test helper shared by the network tests: every trainable weight of the three networks
receives a finite, non-zero gradient from a simple loss on each network's output."""
import numpy as np
import tensorflow as tf


def assert_every_weight_gets_gradient(generator, discriminator, segmentator, images):
    """One forward of the three GRD-Net networks on ``images``, then each network's own loss
    must give every trainable variable a gradient that is not None, finite and non-zero."""
    with tf.GradientTape(persistent=True) as tape:
        x_hat, z, z_hat = generator(images, training=True)
        g_loss = (tf.reduce_mean(tf.square(x_hat - images))
                  + tf.reduce_mean(tf.square(z - z_hat)))
        features, logit = discriminator(images, training=True)
        d_loss = tf.reduce_mean(logit) + tf.reduce_mean(tf.square(features))
        s_loss = tf.reduce_mean(segmentator(tf.concat([images, x_hat], -1), training=True))
    for net, loss in ((generator, g_loss), (discriminator, d_loss), (segmentator, s_loss)):
        grads = tape.gradient(loss, net.trainable_variables)
        for var, grad in zip(net.trainable_variables, grads):
            assert grad is not None, f"{net.name}: no gradient for {var.path}"
            assert np.all(np.isfinite(grad)), f"{net.name}: non-finite gradient for {var.path}"
            assert float(tf.reduce_max(tf.abs(grad))) > 0, f"{net.name}: zero gradient {var.path}"
