"""The named configs (configs/NAME.py, each with get_config()); installed as
grdnet_tf.configs, so `--config=cpu_small` works without the checkout
(grdnet_tf.config.resolve_config_path)."""
