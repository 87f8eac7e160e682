"""Issue 15 item 4 without a GPU: every op of the training step graph and of the serving
graph has a GPU kernel for its dtypes in TensorFlow's kernel registry (the CUDA build of the
pip wheel registers them whether or not a GPU is present), so nothing is pinned to the host
and no host round trip is forced when a GPU runs them."""
import keras
import tensorflow as tf
from tensorflow.python.framework import kernels

from dist_worker import fixed_batch, make_config
from grdnet_tf.models import build_grdnet


def _nodes(graph_def):
    yield from graph_def.node
    for function in graph_def.library.function:  # cond/while branches, nested functions
        yield from function.node_def


def _matches(node, kernel):
    for constraint in kernel.constraint:
        allowed = set(constraint.allowed_values.list.type)
        attr = node.attr.get(constraint.name)
        if attr is None:
            continue
        types = set(attr.list.type) if attr.list.type else {attr.type}
        if not types <= allowed:
            return False
    return True


def ops_without_gpu_kernel(graph_def):
    """{(op type, dtype attrs)} of the nodes no GPU (or device-independent) kernel runs."""
    missing = set()
    for node in _nodes(graph_def):
        registered = kernels.get_registered_kernels_for_op(node.op).kernel
        if not any(k.device_type in ("GPU", "DEFAULT") and _matches(node, k)
                   for k in registered):
            missing.add((node.op, tuple(sorted(
                (name, tf.dtypes.as_dtype(value.type).name)
                for name, value in node.attr.items() if value.type))))
    return missing


def test_the_checker_sees_host_only_ops():
    assert any(k.device_type == "GPU"
               for k in kernels.get_registered_kernels_for_op("Conv2D").kernel), \
        "this TensorFlow build registers no GPU kernels: the check below would be empty"

    @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
    def decode(data):
        return tf.io.encode_png(tf.io.decode_image(data, channels=3, expand_animations=False))
    missing = ops_without_gpu_kernel(decode.get_concrete_function().graph.as_graph_def())
    assert {op for op, _ in missing} == {"DecodeImage", "EncodePng"}


def test_training_step_has_gpu_kernels_only():
    keras.utils.set_random_seed(0)
    model = build_grdnet(make_config(), compile=True)
    graph = tf.function(model.train_step).get_concrete_function(fixed_batch()).graph
    graph_def = graph.as_graph_def()
    ops = {node.op for node in _nodes(graph_def)}
    assert {"Conv2D", "Conv2DBackpropInput", "FusedBatchNormV3", "FusedBatchNormGradV3",
            "AssignVariableOp"} <= ops
    assert ops_without_gpu_kernel(graph_def) == set()


def test_serving_graph_has_gpu_kernels_only(tmp_path):
    from grdnet_tf import run_dir, scoring
    from grdnet_tf.serving import export_lib
    from helpers_run import make_tiny_run

    model_dir = str(tmp_path / "run")
    make_tiny_run(model_dir, threshold=0.5, steps=0)
    loaded = run_dir.load_for_inference(model_dir)
    params = scoring.ScoringParams.from_run(loaded.config, loaded.calibration)
    functions = export_lib.serving_functions(loaded.model, params, 0.5)
    # serve_bytes decodes and encodes files on the host (DecodeImage, EncodePng: CPU only).
    # serve_roi's shape check carries its message as a string constant: host memory, read
    # only when the assertion fails, as TensorFlow places every string tensor.
    # Both validate their inputs at run time (TF Serving does not enforce a signature's
    # shape): the int32 shape goes through SerializeTensor/ParseTensor so that graph-time
    # constant folding cannot drop the check, and the assert messages are string constants.
    # All of it is host-side shape bookkeeping (int32 shapes live in host memory on a GPU,
    # too); no image data passes through a host-only op.
    validation = {("Const", (("dtype", "string"),)), ("SerializeTensor", (("T", "int32"),)),
                  ("ParseTensor", (("out_type", "int32"),))}
    expected = {"serving_default": validation, "serve_roi": validation}
    for name, host_only in expected.items():
        graph_def = functions[name].get_concrete_function().graph.as_graph_def()
        assert ops_without_gpu_kernel(graph_def) == host_only, name
