"""Test configs: configs/tiny.py, and the fast trainer config built on it (no TensorFlow).

Used in-process by the tests and by the subprocess worker tests/dist_worker.py.
"""
import importlib.util
import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = os.path.join(REPO_ROOT, "configs", "tiny.py")


def load_tiny_config():
    """configs/tiny.py's get_config() (a mutable ConfigDict)."""
    spec = importlib.util.spec_from_file_location("grdnet_configs_tiny", TINY_CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def make_config(**train):
    """configs/tiny.py with one stage per network (a train_step traces in a few seconds
    instead of ~15) and cheap synthesis (colour textures, no rotation), plus `train` values.
    The trainer does not care what the networks or the anomalies look like."""
    config = load_tiny_config()
    config.model.stages = 1
    config.model.disc_stages = 1
    config.model.seg_depth = 1
    config.synthesis.texture_self_weight = 0.0
    config.synthesis.texture_perlin_weight = 0.0
    config.synthesis.rotation_deg = 0.0
    config.synthesis.perlin_rotation_deg = 0.0
    config.train.update(train)
    return config
