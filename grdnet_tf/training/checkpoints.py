"""The training checkpoint: counters and plateau state, saved with networks and optimizers.

The run directory around it (file names, JSON files, the inference checkpoint) is
``grdnet_tf.run_dir``.
"""
import tensorflow as tf


class TrainState(tf.Module):
    """Counters and plateau state saved with every checkpoint.

    Create it outside the strategy scope: the loop reads and sets these on the host
    (int()/float() reject distributed variables); every worker holds the same values.
    """

    def __init__(self):
        super().__init__(name="train_state")
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.step_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False,
                                         name="step_in_epoch")
        self.best_val_loss = tf.Variable(float("inf"), dtype=tf.float64, trainable=False,
                                         name="best_val_loss")
        self.plateau_best = tf.Variable(float("inf"), dtype=tf.float64, trainable=False,
                                        name="plateau_best")
        self.plateau_wait = tf.Variable(0, dtype=tf.int64, trainable=False, name="plateau_wait")
        self.learning_rate_scale = tf.Variable(1.0, dtype=tf.float64, trainable=False,
                                               name="learning_rate_scale")


def training_checkpoint(model, state):
    """Everything needed to resume: three networks, three optimizers, counters."""
    return tf.train.Checkpoint(generator=model.generator, discriminator=model.discriminator,
                               segmentator=model.segmentator, g_optimizer=model.g_optimizer,
                               d_optimizer=model.d_optimizer, s_optimizer=model.s_optimizer,
                               state=state)
