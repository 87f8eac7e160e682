"""Shared test fixtures (keep small; no TensorFlow import here)."""
import os

import pytest

import helpers_images


# `make test` runs the suite on two processes (pytest-xdist, `-n 2 --dist loadfile
# --no-loadscope-reorder`): every test file is one unit of work, except that the files
# sharing the session's trained runs and exports (tiny_run, tiny_evaluation, random_run,
# random_export below) form one unit, so that those are made once. Units start longest
# first (durations measured with `pytest --durations`, docs/benchmarks.md "Test suite"),
# the rest in collection order. (xdist's `loadgroup` marks do nothing under pytest 9: it
# renames `item._nodeid`, which pytest 9 no longer reads.)
SHARED_RUNS = ("test_edge", "test_evaluation", "test_export", "test_precision", "test_report",
               "test_robustness_outputs", "test_robustness_serving", "test_scoring_fidelity")
LONGEST_FIRST = ("shared_runs", "test_robustness_training", "test_distributed", "test_sync_bn",
                 "test_cli", "test_training", "test_xla_step", "test_gpu_kernels",
                 "test_networks", "test_attention", "test_train_step", "test_scoring_sources")


def _unit(nodeid):
    """The unit of work of a test id: its file's module name, or "shared_runs"."""
    name = os.path.splitext(os.path.basename(nodeid.split("::", 1)[0]))[0]
    return "shared_runs" if name in SHARED_RUNS else name


def pytest_collection_modifyitems(config, items):
    rank = {unit: i for i, unit in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(_unit(item.nodeid), len(rank)))  # stable


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: `pytest -p no:xdist` still runs
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile` with the units above (pytest-xdist's scheduler hook)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class UnitScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return _unit(nodeid)
    return UnitScheduling(config, log)


@pytest.fixture
def write_image():
    """``write_image(path, array) -> path``: writes a test image with OpenCV (RGB order);
    see helpers_images.write_image."""
    return helpers_images.write_image


@pytest.fixture
def mixed_float16():
    """Runs the test under the global Keras policy "mixed_float16", restoring "float32"."""
    import keras
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.fixture(scope="session")
def demo_category(tmp_path_factory):
    """A small embedded demo dataset (64x64 PNGs, 12 train, 4 good, 4 defect, 4 good outside
    the ROI), generated once per session; returns the category folder."""
    from grdnet_tf.data import demo
    return demo.make_demo_dataset(str(tmp_path_factory.mktemp("demo")), seed=0,
                                  image_size=(64, 64), n_train=12, n_test_good=4,
                                  n_test_defect=4, n_test_outside=4, n_validation=0)


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, demo_category):
    """A real GRD-Net run of configs/tiny.py (2 epochs x 2 steps) on ``demo_category``,
    trained once per session; returns the run directory."""
    from grdnet_tf.config import load_config_file
    from grdnet_tf.training import train_lib
    import ml_collections
    from grdnet_tf.config import freeze
    config = ml_collections.ConfigDict(load_config_file(os.path.join(REPO, "configs",
                                                                     "tiny.py")))
    config.train.eval_every_epochs = 1  # learning-curve logging is exercised here too
    # The per-place image baseline too: calibration.json names its .npz, and evaluation,
    # prediction, recalibration and every export of this run read it.
    config.scoring.image_baseline = "position"
    config = freeze(config)
    model_dir = str(tmp_path_factory.mktemp("tiny_run"))
    train_lib.train(config, demo_category, model_dir)
    return model_dir


@pytest.fixture(scope="session")
def tiny_evaluation(tiny_run, demo_category, tmp_path_factory):
    """``eval_lib.evaluate`` of ``tiny_run`` on ``demo_category`` (two overlays), once per
    session; returns (its result, the output folder). Read only."""
    from grdnet_tf.evaluation import eval_lib
    out = str(tmp_path_factory.mktemp("tiny_evaluation"))
    return eval_lib.evaluate(tiny_run, demo_category, out, num_overlays=2), out


@pytest.fixture(scope="session")
def random_run(tmp_path_factory):
    """``helpers_run.make_tiny_run``'s default run (seed 0, two steps on random 32x32 data,
    threshold 0.5), made once per session for every test that only reads it (a test that
    changes a run copies it into its tmp_path first); returns the run directory."""
    from helpers_run import make_tiny_run
    model_dir = str(tmp_path_factory.mktemp("random_run") / "run")
    make_tiny_run(model_dir)
    return model_dir


@pytest.fixture(scope="session")
def random_export(random_run, tmp_path_factory):
    """``random_run`` restored and exported once (SavedModel, the export's defaults):
    SimpleNamespace(model_dir, loaded (run_dir.LoadedRun), base, version_dir = base/1).
    Read only: tests write further exports into export bases of their own."""
    import types

    from grdnet_tf import run_dir
    from grdnet_tf.serving import export_lib
    loaded = run_dir.load_for_inference(random_run)
    base = str(tmp_path_factory.mktemp("random_export") / "exported")
    version_dir = export_lib.export_model(loaded, base, model_dir=random_run)
    return types.SimpleNamespace(model_dir=random_run, loaded=loaded, base=base,
                                 version_dir=version_dir)
