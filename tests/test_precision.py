"""train.precision (issue 15 item 3): the config key that replaced train.mixed_precision, old
run configs still loading, and a mixed_bfloat16 training step next to a float32 one."""
import keras
import numpy as np
import pytest

from grdnet_tf import config as config_lib
from dist_worker import fixed_batch, make_config


def test_precision_defaults_to_float32_and_is_checked():
    assert config_lib.base_config().train.precision == "float32"
    for precision in ("float32", "mixed_bfloat16", "mixed_float16"):
        config_lib.with_overrides(config_lib.base_config(), {"train.precision": precision})
    with pytest.raises(ValueError, match="train.precision"):
        config_lib.with_overrides(config_lib.base_config(), {"train.precision": "float16"})


@pytest.mark.parametrize("old, new", [(False, "float32"), (True, "mixed_float16")])
def test_old_run_configs_with_mixed_precision_still_load(old, new):
    values = config_lib.base_config().to_dict()
    del values["train"]["precision"]
    values["train"]["mixed_precision"] = old
    assert config_lib.from_dict(values).train.precision == new


def test_a_bad_old_mixed_precision_value_names_the_key():
    values = config_lib.base_config().to_dict()
    values["train"]["mixed_precision"] = "yes"
    with pytest.raises(ValueError, match="train.mixed_precision='yes'.*train.precision"):
        config_lib.from_dict(values)


def _steps(precision, steps=2):
    from grdnet_tf.models.grdnet import build_grdnet, set_precision
    set_precision(precision)
    try:
        keras.utils.set_random_seed(3)
        model = build_grdnet(make_config(), compile=True, precision=precision)
        logs = [{k: float(v) for k, v in model.train_step(fixed_batch(seed=s)).items()}
                for s in range(steps)]
    finally:
        set_precision("float32")
    return model, logs


def test_mixed_bfloat16_step_follows_the_float32_step():
    model, logs = _steps("mixed_bfloat16")
    assert model.generator.compute_dtype == model.segmentator.compute_dtype == "bfloat16"
    assert all(v.dtype == "float32" for v in model.variables)
    # bfloat16 has float32's range: no loss scaling, every optimizer steps every time.
    assert not any(isinstance(o, keras.optimizers.LossScaleOptimizer)
                   for o in model.optimizers.values())
    assert [int(o.iterations) for o in model.optimizers.values()] == [2, 2, 2]
    _, reference = _steps("float32")
    for name, value in reference[-1].items():
        np.testing.assert_allclose(logs[-1][name], value, rtol=0.05, err_msg=name)


def test_set_precision_rejects_unknown_names():
    from grdnet_tf.models.grdnet import set_precision
    with pytest.raises(ValueError, match="precision"):
        set_precision("bfloat16")


def test_serving_graph_at_mixed_bfloat16(random_export, tmp_path):
    import tensorflow as tf

    from grdnet_tf import keys
    from grdnet_tf.serving import export_lib

    # float32: the session's export of the tiny run (conftest.random_export).
    exports = {"float32": random_export.version_dir,
               "mixed_bfloat16": export_lib.export_run(random_export.model_dir,
                                                       str(tmp_path / "mixed_bfloat16"),
                                                       precision="mixed_bfloat16")}
    assert keras.mixed_precision.global_policy().name == "float32"  # restored
    images = tf.constant(np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3)), tf.uint8)
    outputs = {}
    for precision, version_dir in exports.items():
        assert export_lib.read_metadata(version_dir)["precision"] == precision
        serve = tf.saved_model.load(version_dir).signatures["serving_default"]
        graph = serve.graph.as_graph_def()
        functions = [f.node_def for f in graph.library.function] + [graph.node]
        conv_types = {n.attr["T"].type for nodes in functions for n in nodes
                      if n.op == "Conv2D"}
        assert conv_types == {tf.bfloat16.as_datatype_enum if precision != "float32"
                              else tf.float32.as_datatype_enum}, precision
        outputs[precision] = {k: v.numpy() for k, v in serve(images=images).items()}
    reference, reduced = outputs["float32"], outputs["mixed_bfloat16"]
    assert reduced[keys.ANOMALY_MAP].dtype == np.float32
    np.testing.assert_allclose(reduced[keys.ANOMALY_MAP], reference[keys.ANOMALY_MAP],
                               atol=0.05)


def test_export_rejects_an_unknown_precision(tmp_path):
    from grdnet_tf.serving import export_lib
    from helpers_run import make_tiny_run

    model_dir = str(tmp_path / "run")
    make_tiny_run(model_dir, threshold=0.5, steps=0)
    with pytest.raises(ValueError, match="precision"):
        export_lib.export_run(model_dir, str(tmp_path / "out"), precision="float16")
    assert not (tmp_path / "out").exists()


def test_an_overflow_in_one_network_skips_all_three_updates(mixed_float16):
    import tensorflow as tf

    keras.utils.set_random_seed(5)
    from grdnet_tf.models.grdnet import build_grdnet
    model = build_grdnet(make_config(), compile=True, precision="mixed_float16")
    optimizers = model.optimizers
    # The generator's loss scaled by 2**40 overflows its float16 backward pass; the other
    # two at scale 1 have finite gradients and would step on their own.
    for name, optimizer in optimizers.items():
        optimizer.dynamic_scale.assign(2.0 ** 40 if name == "generator" else 1.0)
    before = [v.numpy() for v in model.trainable_variables]
    logs = model.train_step(fixed_batch(seed=2))
    assert [int(o.iterations) for o in optimizers.values()] == [0, 0, 0]
    for b, v in zip(before, model.trainable_variables):
        np.testing.assert_array_equal(v.numpy(), b, err_msg=v.path)
    assert {n: float(o.dynamic_scale) for n, o in optimizers.items()} == {
        "generator": 2.0 ** 39, "discriminator": 0.5, "segmentator": 0.5}
    assert all(float(logs[f"{n}_grad_norm"]) == 0.0 for n in optimizers)  # skipped: weight 0
    # The next step at finite scales updates all three.
    optimizers["generator"].dynamic_scale.assign(1.0)
    model.train_step(fixed_batch(seed=3))
    assert [int(o.iterations) for o in optimizers.values()] == [1, 1, 1]
    assert tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in model.variables])
