"""FLOP accounting shared by the benchmarks: FLOPs per image of every GRD-Net computation.

    .venv/bin/python bench/flops.py [--configs=paper,cpu_small] [--batch_size=8]

Prints the JSON result as the last line and writes bench/results/flops.json.

Method (TF profiler statistics on the real graph, not an analytic formula): each computation
is traced as a `tf.function` with fully static shapes; its graph is pruned to the ops that
its outputs and side effects (variable updates) depend on, i.e. what actually runs; every
remaining op is counted with TensorFlow's registered "flops" statistics, the functions
`tf.compat.v1.profiler` uses (`tensorflow/python/profiler/internal/flops_registry.py`):
Conv2D, Conv2DBackpropInput, Conv2DBackpropFilter and MatMul count 2 FLOPs per multiply-add;
elementwise ops count one FLOP per output element. The backward pass is therefore counted
op by op (not assumed to be 2x forward). The depthwise convolutions of the SSIM window
(contextual loss) are counted here with the same 2-per-multiply-add rule, forward and
backprop, because the registry cannot (dynamic kernel shape, no backprop rule).

"model FLOPs" = convolutions + matmuls (the arithmetic the method needs, comparable to the
PyTorch reference counts); "other FLOPs" = elementwise ops and reductions the registry
counts (normalisation, activations, losses, Adam), reported separately because they are
memory-bound and depend on the implementation. Per-image values divide a batch's count
by the batch size.
"""
import collections
import dataclasses
import json
import os
import sys

import tensorflow as tf
from tensorflow.python.framework import ops as tf_ops
from tensorflow.python.profiler.internal import flops_registry  # noqa: F401 (registers)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from grdnet_tf import config as config_lib  # noqa: E402
from grdnet_tf import keys  # noqa: E402
from grdnet_tf.models import build_grdnet  # noqa: E402

# Ops whose FLOPs are the model's arithmetic (2 per multiply-add).
MODEL_OPS = ("Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter", "MatMul",
             "BatchMatMulV2", "BatchMatMulV3", "DepthwiseConv2dNative",
             "DepthwiseConv2dNativeBackpropInput", "DepthwiseConv2dNativeBackpropFilter",
             "_FusedConv2D", "_FusedMatMul")
CONTROL_FLOW_OPS = ("If", "StatelessIf", "While", "StatelessWhile", "PartitionedCall",
                    "StatefulPartitionedCall", "Case", "StatelessCase")
CONFIGS = {"paper": "configs/paper.py", "cpu_small": "configs/cpu_small.py"}


@dataclasses.dataclass
class Count:
    """FLOPs of one traced computation (whole batch)."""
    model: int = 0
    other: int = 0
    by_type: dict = dataclasses.field(default_factory=dict)
    control_flow: list = dataclasses.field(default_factory=list)  # nested bodies not counted

    def per_image(self, batch_size):
        return {"model_gflop": self.model / batch_size / 1e9,
                "other_gflop": self.other / batch_size / 1e9}


def _depthwise_flops(op):
    """2 x (forward output elements) x kernel area, for the forward op and both backprops.

    Counted here because the SSIM window's kernel has a dynamic channel dimension, which the
    registry's forward rule rejects, and the registry has no backprop rules.
    """
    forward_output = op.outputs[0] if op.type == "DepthwiseConv2dNative" else op.inputs[2]
    kernel = op.inputs[1].shape
    return 2 * forward_output.shape.num_elements() * kernel[0] * kernel[1]


def needed_ops(graph):
    """Ops the graph's outputs and control outputs (stateful updates) depend on."""
    stack = [t.op for t in graph.outputs] + list(graph.control_outputs)
    seen = {}
    while stack:
        op = stack.pop()
        if op.name in seen:
            continue
        seen[op.name] = op
        stack.extend(t.op for t in op.inputs)
        stack.extend(op.control_inputs)
    return list(seen.values())


def count_ops(ops):
    """Model (conv + matmul) FLOPs of a list of ops."""
    return count_list(ops).model


def count_graph(graph, prune=True):
    """FLOPs of a FuncGraph with static shapes (see module docstring)."""
    return count_list(needed_ops(graph) if prune else graph.get_operations())


def count_list(ops):
    count = Count()
    by_type = collections.Counter()
    for op in ops:
        if op.type in CONTROL_FLOW_OPS:
            count.control_flow.append(op.name)
        if op.type.startswith("DepthwiseConv2dNative"):
            flops = _depthwise_flops(op)
        else:
            try:
                stats = tf_ops.get_stats_for_node_def(op.graph, op.node_def, "flops")
            except ValueError:  # a shape that is not fully defined
                stats = None
            flops = int(stats.value) if stats is not None and stats.value else 0
        if not flops:
            continue
        by_type[op.type] += flops
        if op.type in MODEL_OPS:
            count.model += flops
        else:
            count.other += flops
    count.by_type = dict(by_type.most_common())
    return count


def count_function(fn, *args):
    """FLOPs of `fn(*args)` traced once as a tf.function (args: tensors or TensorSpecs)."""
    concrete = tf.function(fn, autograph=False).get_concrete_function(*args)
    return count_graph(concrete.graph)


def load_config(name_or_path, overrides=()):
    """A frozen config from "paper", "cpu_small" or a path to a configs/*.py file.

    overrides: "KEY=VALUE" strings (e.g. "model.attention=se"), applied before freezing.
    """
    path = CONFIGS.get(name_or_path, name_or_path)
    if not os.path.isabs(path):
        path = os.path.join(REPO_ROOT, path)
    config = config_lib.load_config_file(path)
    return config_lib.with_overrides(config, config_lib.parse_overrides(overrides))


def random_batch(config, batch_size, seed=0):
    """A training batch (image, perturbed, mask, roi) of random data at the config's size."""
    height, width = config.data.image_size
    channels = config.data.channels
    gen = tf.random.Generator.from_seed(seed)
    image = gen.uniform((batch_size, height, width, channels))
    mask = tf.cast(gen.uniform((batch_size, height, width, 1)) > 0.8, tf.float32)
    perturbed = mask * gen.uniform(image.shape) + (1.0 - mask) * image
    return {keys.IMAGE: image, keys.PERTURBED: perturbed, keys.MASK: mask,
            keys.ROI: tf.ones((batch_size, height, width, 1))}


def model_flops(model, config, batch_size):
    """Per-image GFLOP of each network's forward, inference and the full training step."""
    height, width = config.data.image_size
    channels = config.data.channels
    image = tf.TensorSpec((batch_size, height, width, channels), tf.float32)
    pair = tf.TensorSpec((batch_size, height, width, 2 * channels), tf.float32)
    batch = random_batch(config, batch_size)
    batch_spec = {k: tf.TensorSpec(v.shape, v.dtype) for k, v in batch.items()}
    counts = {
        "generator_forward": count_function(
            lambda x: model.generator(x, training=True), image),
        "generator_inference": count_function(
            lambda x: model.generator.reconstruct(x, training=False), image),
        "discriminator_forward": count_function(
            lambda x: model.discriminator(x, training=True), image),
        "segmentator_forward": count_function(
            lambda x: model.segmentator(x, training=True), pair),
        "inference": count_function(lambda x: model(x, training=False), image),
        "train_step": count_function(model.train_step, batch_spec),
    }
    result = {name: {k: round(v, 3) for k, v in c.per_image(batch_size).items()}
              for name, c in counts.items()}
    step = counts["train_step"]
    result["train_step"]["by_op_type_gflop"] = {
        k: round(v / batch_size / 1e9, 3) for k, v in step.by_type.items() if v}
    forward = (counts["generator_forward"].model + 2 * counts["discriminator_forward"].model
               + counts["segmentator_forward"].model)
    result["train_step"]["forward_model_gflop"] = round(forward / batch_size / 1e9, 3)
    result["train_step"]["backward_to_forward"] = round((step.model - forward) / forward, 3)
    result["control_flow_ops_not_counted"] = sorted(
        {n for c in counts.values() for n in c.control_flow})
    return result


def main():
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="paper,cpu_small",
                        help="comma-separated: paper, cpu_small or paths to configs/*.py")
    parser.add_argument("--batch_size", type=int, default=8)
    args = parser.parse_args()
    result = {"benchmark": "flops", "batch_size": args.batch_size,
              "method": "TF profiler flops registry on the pruned tf.function graph "
                        "(backward counted op by op); model = conv + matmul FLOPs",
              "load_average": round(os.getloadavg()[0], 2), "configs": {}}
    for name in args.configs.split(","):
        config = load_config(name)
        result["configs"][name] = {
            "image_size": list(config.data.image_size),
            "per_image": model_flops(build_grdnet(config, compile=True), config, args.batch_size)}
    os.makedirs(os.path.join(REPO_ROOT, "bench", "results"), exist_ok=True)
    path = os.path.join(REPO_ROOT, "bench", "results", "flops.json")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    os.replace(path + ".tmp", path)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
