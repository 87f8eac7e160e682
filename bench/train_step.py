"""Benchmark: images/s of the full GRD-Net training step (discriminator, generator and
segmentator updates), its FLOP rate against the machine's ceiling, and where the time goes.

    .venv/bin/python bench/train_step.py [--configs=paper,cpu_small] [--batch_size=8]
        [--warmup=3] [--steps=10] [--no-split] [--no-profile] [--no-before_after]
        [--no-xla] [--wait_for_load=0] [--set=model.attention=se ...] [--device=cpu|gpu]

Per config (configs/paper.py: 256x256; configs/cpu_small.py: 128x128), batch 8, float32,
random data already in memory (the input pipeline is benchmarked in bench/pipeline.py),
each config in its own process:

  step      `GRDNet.train_step` as a tf.function (what grdnet_tf.training.train_lib runs),
            ``--warmup`` untimed steps, then the median of ``--steps`` timed steps (wall
            and process CPU seconds); tracing count afterwards; graph checks (float64 ops,
            transposes, host copies, py_funcs, control flow).
  flops     per-image FLOPs of the step and of each network's forward (bench/flops.py:
            TF profiler flops registry on the pruned graph; backward counted op by op).
  ceiling   large conv2d / matmul GFLOP/s measured in the same process (bench/ceiling.py),
            before and after the step timing; the ratio uses their mean.
  split     marginal time and FLOPs of each update: the same step without the
            discriminator, without the generator, without the segmentator update; the
            shared forward (generator + discriminator on X and X̂ + losses) is the rest.
  profile   TF profiler trace of 2 steps: top ops by self time, time per op category, conv
            GFLOP/s per kernel kind; the trace goes to bench/results/profile_<config>/.
  before_after  one row per optimisation of grdnet_tf/models/blocks.py: the step built with
            the Keras layer used before it (keras.layers.BatchNormalization instead of
            FusedBatchNormalization): loss and gradient differences from identical weights,
            and old/new steps interleaved (same load) for speed.
  precision the step under each ``--precisions`` dtype policy (default mixed_bfloat16)
            from the same weights: loss differences, and float32 / reduced steps
            interleaved (same load) for speed.
  xla       the same step with jit_compile=True: compile time and median step time.
  memory    peak RSS after the timed steps (model + step) and for the whole run (with
            --device=gpu also the GPU allocator's peak).

``--device=gpu`` places model, data and every step on /GPU:0 (memory growth on), measures
the ceilings there, synchronises every timed step with the GPU (bench/ceiling.py
`synchronise`) and reports the same images/s, GFLOP/s and TFLOP/s and ratios, plus the GPU's
name and compute capability. CPU-only fields (process CPU seconds, thread pools) are listed
under "not_applicable_on_gpu" instead, and the profile keeps the trace without the host-op
breakdown (on a GPU the host's op events time kernel launches). The ceiling of each reduced
precision (``--precisions``, and ``train.precision`` when it is not float32, which is then
timed as a precision row too) is the conv2d in its compute dtype (bfloat16 / float16),
measured on the same device, before and after as well.

The JSON result is the last line of stdout and bench/results/train_step.json (one
bench/results/train_step_<config>.json per config as well).
"""
import argparse
import collections
import contextlib
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)
sys.path.insert(0, os.path.dirname(BENCH_DIR))


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="paper,cpu_small")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--split", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--split_steps", type=int, default=4)
    parser.add_argument("--xla", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--xla_steps", type=int, default=5)
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--before_after", action=argparse.BooleanOptionalAction,
                        default=True, help="compare with keras.layers.BatchNormalization")
    parser.add_argument("--before_after_rounds", type=int, default=5)
    parser.add_argument("--precisions", default="mixed_bfloat16",
                        help="comma-separated train.precision values timed against float32 "
                             "(alternating steps, same weights); empty = none")
    parser.add_argument("--precision_rounds", type=int, default=5)
    parser.add_argument("--ceiling_repeats", type=int, default=10)
    parser.add_argument("--inter_op", type=int, default=0, help="0 = TensorFlow default")
    parser.add_argument("--intra_op", type=int, default=0, help="0 = TensorFlow default")
    parser.add_argument("--wait_for_load", type=float, default=0,
                        help="seconds to wait at most for a load average below 1.5")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. --set=model.attention=se (repeatable)")
    parser.add_argument("--name", default="train_step", help="bench/results/<name>.json")
    parser.add_argument("--device", default="cpu",
                        help="cpu (/CPU:0) or gpu (/GPU:0: model, data and step on the GPU)")
    return parser.parse_args()


ARGS = parse_args() if __name__ == "__main__" else None

import tensorflow as tf  # noqa: E402  (threading must be configured before TF starts)

import ceiling  # noqa: E402
import flops  # noqa: E402
from grdnet_tf import keys  # noqa: E402
from grdnet_tf.models import build_grdnet  # noqa: E402
from grdnet_tf.models.grdnet import set_precision  # noqa: E402


# ----------------------------------------------------------------------------- step variants

def step_without(model, skip):
    """GRDNet.train_step minus one update ("discriminator", "generator" or "segmentator").

    Same forward and losses as the real step; only used to measure each update's marginal
    cost. The real step is `model.train_step` itself.
    """
    def step(data):
        with tf.GradientTape(persistent=True) as tape:
            scalars, x_hat = model.compute_losses(data, training=True)
        updates = []
        if skip != "discriminator":
            updates.append((model.d_optimizer, model.discriminator,
                            tape.gradient(scalars["discriminator_loss"],
                                          model.discriminator.trainable_variables)))
        if skip != "generator":
            updates.append((model.g_optimizer, model.generator,
                            tape.gradient(scalars["generator_loss"],
                                          model.generator.trainable_variables)))
        del tape
        if skip != "segmentator":
            with tf.GradientTape() as seg_tape:
                scalars["segmentator_loss"] = model.segmentator_loss(data, x_hat,
                                                                     training=True)
            updates.append((model.s_optimizer, model.segmentator,
                            seg_tape.gradient(scalars["segmentator_loss"],
                                              model.segmentator.trainable_variables)))
        for optimizer, net, grads in updates:
            optimizer.apply_gradients(zip(grads, net.trainable_variables))
        return scalars
    return step


OLD_BATCHNORM = "keras.layers.BatchNormalization (tf.nn.moments + tf.nn.batch_normalization)"


@contextlib.contextmanager
def keras_batchnorm():
    """Networks built inside use keras.layers.BatchNormalization, the layer grdnet_tf used
    before FusedBatchNormalization. (A broadcast nearest-upsampling layer was measured the
    same way and removed: it was not faster than keras.layers.UpSampling2D;
    docs/benchmarks.md.)"""
    from grdnet_tf.models import blocks, networks

    make_norm = blocks.make_norm

    def keras_norm(kind, channels, name):
        if kind == "batch":
            return tf.keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=name)
        return make_norm(kind, channels, name)

    blocks.make_norm = networks.make_norm = keras_norm
    try:
        yield
    finally:
        blocks.make_norm = networks.make_norm = make_norm


def _losses_and_gradients(model, batch):
    with tf.GradientTape(persistent=True) as tape:
        scalars, x_hat = model.compute_losses(batch, training=True)
        scalars["segmentator_loss"] = model.segmentator_loss(batch, x_hat, training=True)
    grads = {name: tape.gradient(scalars[f"{name}_loss"], net.trainable_variables)
             for name, net in (("discriminator", model.discriminator),
                               ("generator", model.generator),
                               ("segmentator", model.segmentator))}
    return scalars, grads


def before_after(config, model, batch, step, rounds, log, device):
    """The same step with Keras batch norm: numerics from identical weights, then speed.

    Numerics: every loss and each network's gradient (relative L2 difference) from the
    same weights and batch. Speed: old and new steps interleaved (old, new, old, ...) so
    both see the same load; medians of `rounds` each.
    """
    with keras_batchnorm():
        old = build_grdnet(config, compile=True)
    for new_var, old_var in zip(model.variables, old.variables):
        if new_var.shape != old_var.shape:
            raise ValueError(f"variable mismatch {new_var.path} / {old_var.path}")
        old_var.assign(new_var)
    new_losses, new_grads = tf.function(lambda: _losses_and_gradients(model, batch))()
    old_losses, old_grads = tf.function(lambda: _losses_and_gradients(old, batch))()
    numerics = {"max_relative_loss_difference": float(max(
        abs(float(new_losses[k]) - float(old_losses[k])) / max(abs(float(old_losses[k])), 1e-12)
        for k in old_losses))}
    for name in new_grads:
        diff = tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(a - b))
                                 for a, b in zip(new_grads[name], old_grads[name])]))
        numerics[f"{name}_gradient_relative_l2_difference"] = float(
            diff / tf.linalg.global_norm(old_grads[name]))

    # Scale of float32 rounding in this network: the old layers' own gradients when the
    # input images move by one part in 1e7 (about one float32 ulp).
    nudged = dict(batch)
    for key in (keys.IMAGE, keys.PERTURBED):
        noise = tf.random.stateless_normal(batch[key].shape, [1, 2])
        nudged[key] = batch[key] * (1.0 + 1e-7 * noise)
    _, nudged_grads = tf.function(lambda: _losses_and_gradients(old, nudged))()
    for name in new_grads:
        diff = tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(a - b))
                                 for a, b in zip(nudged_grads[name], old_grads[name])]))
        numerics[f"{name}_gradient_relative_l2_old_vs_old_input_1e-7"] = float(
            diff / tf.linalg.global_norm(old_grads[name]))

    log("before/after: tracing the step with Keras batch norm")
    old_timing, new_timing = _interleaved([tf.function(old.train_step), step], batch, rounds)
    batch_size = int(batch[next(iter(batch))].shape[0])
    return ceiling.cpu_only({
        "old": OLD_BATCHNORM, "rounds": rounds,
        "old_images_per_second": round(batch_size / old_timing.median_wall, 3),
        "new_images_per_second": round(batch_size / new_timing.median_wall, 3),
        "speedup_wall": round(old_timing.median_wall / new_timing.median_wall, 3),
        "numerics": {k: float(f"{v:.3g}") for k, v in numerics.items()},
        "load_average": ceiling.load_average(),
    }, device, old_cpu_seconds_per_step=round(old_timing.median_cpu, 3),
        new_cpu_seconds_per_step=round(new_timing.median_cpu, 3),
        speedup_cpu=round(old_timing.median_cpu / new_timing.median_cpu, 3))


def precision_row(config, model, batch, step, precision, rounds, log, device, step_gflop,
                  ceilings):
    """The step under the dtype policy `precision` against the float32 `step`: loss
    differences from identical weights, then both steps alternating (same load); its FLOP
    rate against the conv ceiling in its compute dtype (`ceilings`: the run's before and
    after `ceiling.measure_ceiling` results)."""
    set_precision(precision)
    try:
        reduced = build_grdnet(config, compile=True, precision=precision)
    finally:
        set_precision("float32")
    for source, target in zip(model.variables, reduced.variables):
        target.assign(source)
    losses, _ = tf.function(lambda: _losses_and_gradients(model, batch))()
    reduced_losses, _ = tf.function(lambda: _losses_and_gradients(reduced, batch))()
    log(f"precision: tracing the {precision} step")
    float32_timing, reduced_timing = _interleaved([step, tf.function(reduced.train_step)],
                                                  batch, rounds)
    batch_size = int(batch[next(iter(batch))].shape[0])
    loss_difference = max(abs(float(reduced_losses[k]) - float(losses[k]))
                          / max(abs(float(losses[k])), 1e-12) for k in losses)
    images_per_second = batch_size / reduced_timing.median_wall
    dtype = compute_dtype(precision)
    return ceiling.cpu_only({
        "precision": precision, "compute_dtype": dtype, "rounds": rounds,
        "float32_images_per_second": round(batch_size / float32_timing.median_wall, 3),
        "images_per_second": round(images_per_second, 3),
        "speedup_wall": round(float32_timing.median_wall / reduced_timing.median_wall, 3),
        **rates(step_gflop * images_per_second, ceilings, f"conv2d_{dtype}"),
        "max_relative_loss_difference": float(f"{loss_difference:.3g}"),
        "load_average": ceiling.load_average(),
    }, device, speedup_cpu=round(float32_timing.median_cpu / reduced_timing.median_cpu, 3))


def compute_dtype(precision):
    """"mixed_float16" -> "float16": the dtype the layers compute in under `precision`."""
    return tf.keras.mixed_precision.Policy(precision).compute_dtype


def precisions(args, config):
    """The precision rows: --precisions, and train.precision when it is not float32 (the
    step itself stays float32, the baseline every row is compared with)."""
    names = [p for p in args.precisions.split(",") if p]
    if config.train.precision != "float32" and config.train.precision not in names:
        names.append(config.train.precision)
    return names


def rates(achieved_gflops, ceilings, key="conv2d"):
    """Achieved GFLOP/s and TFLOP/s, the same-run ceiling `key` ("conv2d" or
    "conv2d_<dtype>": mean of its before/after medians) and the ratio to it."""
    ceiling_gflops = statistics.mean(c[key]["gflops_median"] for c in ceilings)
    return {"achieved_gflops": round(achieved_gflops, 1),
            "achieved_tflops": float(f"{achieved_gflops / 1e3:.4g}"),
            "ceiling_conv2d_gflops": round(ceiling_gflops, 1),
            "ceiling_conv2d_tflops": float(f"{ceiling_gflops / 1e3:.4g}"),
            "ceiling_dtype": ceilings[0][key]["dtype"],
            "ratio_to_conv_ceiling": round(achieved_gflops / ceiling_gflops, 3)}


def _interleaved(steps, batch, rounds):
    """Each step called twice (tracing, warm-up), then all of them alternately `rounds`
    times, so that they see the same load; one timing per step."""
    for fn in steps:
        for _ in range(2):
            ceiling.synchronise(fn(batch))
    return ceiling.alternating_calls([lambda fn=fn: fn(batch) for fn in steps], rounds)


def time_steps(fn, batch, warmup, steps):
    return ceiling.timed_calls(lambda: fn(batch), steps, warmup=warmup)


# ----------------------------------------------------------------------------- profile

def _base_type(op_type):
    """Op type without the oneDNN kernel prefix (_MklNativeConv2D -> Conv2D)."""
    for prefix in ("_MklNative", "_Mkl"):
        if op_type.startswith(prefix):
            return op_type[len(prefix):]
    return op_type


def _op_category(name, op_type):
    """Coarse bucket of one TF op (node name, base op type) for the time breakdown."""
    if op_type in ("Conv2D", "FusedConv2D", "MatMul", "FusedMatMul"):
        return "conv forward"
    if op_type.startswith("Conv2DBackpropInput"):
        return "conv backprop input"
    if op_type.startswith("Conv2DBackpropFilter"):
        return "conv backprop filter"
    if "Depthwise" in op_type:
        return "ssim depthwise conv (fwd+bwd)"
    if "adam" in name.split("/")[0]:
        return "optimizer (Adam)"
    if "BatchNorm" in op_type or "/norm" in name or "out_norm" in name:
        return "batch norm (fwd+bwd)"
    if "act" in name or op_type.startswith(("Relu", "LeakyRelu")):
        return "activations (fwd+bwd)"
    if "upsample" in name or "concat" in name:
        return "upsample / concat (fwd+bwd)"
    if "ssim" in name.lower():
        return "ssim (other ops)"
    return "other (losses, shortcut adds, casts, ...)"


def _conv_label(op):
    """"3x3/s1 forward"-style label of a conv op (kernel, stride, direction), "c3" when one
    side has at most 6 channels (image-facing stems and output convs)."""
    if op.type in ("MatMul", "BatchMatMulV2", "BatchMatMulV3"):
        return "matmul"
    kernel = op.outputs[0].shape if op.type.endswith("BackpropFilter") else op.inputs[1].shape
    stride = op.get_attr("strides")[1] if "strides" in op.node_def.attr else 1
    direction = ("backprop filter" if op.type.endswith("BackpropFilter") else
                 "backprop input" if op.type.endswith("BackpropInput") else "forward")
    if op.type.startswith("Depthwise"):
        return f"depthwise {kernel[0]}x{kernel[1]} {direction}"
    narrow = " c<=6" if min(kernel[2], kernel[3]) <= 6 else ""
    return f"{kernel[0]}x{kernel[1]}/s{stride}{narrow} {direction}"


def node_flops(graph):
    """{runtime node name: (FLOPs, label)} of the conv/matmul ops of a traced graph.

    Grappler renames fused nodes after the last op of the pattern (Conv2D + BiasAdd + the
    residual Add runs as one node named ".../add"): those names get the FLOPs of the conv
    they contain.
    """
    out = {}
    conv_ops = [op for op in flops.needed_ops(graph) if op.type in flops.MODEL_OPS]
    direct = {op.name for op in conv_ops}
    for op in conv_ops:
        entry = (flops.count_ops([op]), _conv_label(op))
        out[op.name] = entry
        frontier = [op]
        for _ in range(2):  # conv -> BiasAdd -> Add (residual) / Relu
            frontier = [c for f in frontier for c in f.outputs[0].consumers()
                        if c.type in ("BiasAdd", "AddV2", "Add", "Relu", "LeakyRelu")]
            for consumer in frontier:
                # An Add fed by two convs (conv2 and the projection shortcut) runs fused
                # with the larger one; the other keeps its own ".../BiasAdd" node.
                if consumer.name not in out or out[consumer.name][0] < entry[0]:
                    if consumer.name not in direct:
                        out[consumer.name] = entry
    return out


def parse_trace(logdir, steps, top=15, flops_by_node=None):
    """Self time per op from the TF profiler's XPlane (host CPU plane).

    Op events are "node_name:OpType" on the executor threads; self time = event duration
    minus nested op events on the same thread. Returns top ops by type and by node name and
    the time per category, all in ms per step; the sum over ops can exceed wall time when
    the two inter-op threads run ops concurrently.
    """
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    paths = sorted(glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb")))
    space = xplane_pb2.XSpace()
    with open(paths[-1], "rb") as f:
        space.ParseFromString(f.read())
    by_type, by_name, by_category = (collections.Counter(), collections.Counter(),
                                     collections.Counter())
    conv_ms = collections.Counter()
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        for line in plane.lines:
            events = []
            for event in line.events:
                full = plane.event_metadata[event.metadata_id].name
                if ":" not in full or " " in full or "::" in full:
                    continue  # not a TF op event ("node_name:OpType")
                name, op_type = full.rsplit(":", 1)
                op_type = _base_type(op_type)
                events.append((event.offset_ps, event.offset_ps + event.duration_ps, name,
                               op_type))
            events.sort(key=lambda e: (e[0], -e[1]))
            stack = []  # [end, name, type, self_ps]

            def close(entry):
                ms = entry[3] / 1e9 / steps
                by_type[entry[2]] += ms
                by_name[f"{entry[1]} ({entry[2]})"] += ms
                by_category[_op_category(entry[1], entry[2])] += ms
                if flops_by_node and entry[1] in flops_by_node:
                    conv_ms[entry[1]] += ms

            for start, end, name, op_type in events:
                while stack and stack[-1][0] <= start:
                    close(stack.pop())
                if stack:
                    stack[-1][3] -= end - start
                stack.append([end, name, op_type, end - start])
            while stack:
                close(stack.pop())
    total = sum(by_type.values())
    return {
        "op_time_ms_per_step": round(total, 1),
        "top_ops_by_type": [{"op": k, "ms": round(v, 1), "share": round(v / total, 3)}
                            for k, v in by_type.most_common(top)],
        "top_ops_by_node": [{"op": k, "ms": round(v, 1), "share": round(v / total, 3)}
                            for k, v in by_name.most_common(top)],
        "by_category": [{"category": k, "ms": round(v, 1), "share": round(v / total, 3)}
                        for k, v in by_category.most_common()],
        **(_conv_rates(conv_ms, flops_by_node, top) if flops_by_node else {}),
    }


def _conv_rates(conv_ms, flops_by_node, top):
    """GFLOP/s of op time per conv node and per conv kind, and the time by rate band."""
    rows = [(name, ms, flops_by_node[name][0] / (ms / 1e3) / 1e9)
            for name, ms in conv_ms.items()]
    bands = collections.Counter()
    kinds = collections.defaultdict(lambda: [0.0, 0.0])  # label -> [ms, flops]
    for name, ms, rate in rows:
        bands["< 25" if rate < 25 else "25-50" if rate < 50 else "50-75" if rate < 75
              else "75-100" if rate < 100 else ">= 100"] += ms
        kinds[flops_by_node[name][1]][0] += ms
        kinds[flops_by_node[name][1]][1] += flops_by_node[name][0]
    return {
        "conv_by_kind": sorted(
            ({"kind": k, "ms": round(ms, 1), "gflop": round(f / 1e9, 1),
              "gflops": round(f / (ms / 1e3) / 1e9, 1)} for k, (ms, f) in kinds.items()),
            key=lambda r: -r["ms"]),
        "conv_nodes_top_by_time": [{"node": n, "ms": round(ms, 1), "gflops": round(r, 1)}
                                   for n, ms, r in sorted(rows, key=lambda r: -r[1])[:top]],
        "conv_ms_by_gflops_band": {k: round(v, 1) for k, v in sorted(bands.items())},
    }


def profile_steps(fn, batch, name, steps=2, graph=None, device="/CPU:0"):
    """TF profiler trace of `steps` steps; on CPU with the op breakdown of `parse_trace`.
    On a GPU the host's op events time kernel launches, not kernels: the trace is kept
    (TensorBoard's profile plugin shows the GPU kernels) and the breakdown is left out."""
    logdir = os.path.join(ceiling.RESULTS_DIR, f"profile_{name}")
    shutil.rmtree(logdir, ignore_errors=True)
    tf.profiler.experimental.start(logdir)
    for _ in range(steps):
        ceiling.synchronise(fn(batch))
    tf.profiler.experimental.stop()
    out = {"logdir": os.path.relpath(logdir, os.path.dirname(BENCH_DIR))}
    if ceiling.is_gpu(device):
        out["not_applicable_on_gpu"] = ["op breakdown (host op events time kernel launches; "
                                        "open the trace in TensorBoard)"]
        return out
    return {**out, **parse_trace(logdir, steps,
                                 flops_by_node=node_flops(graph) if graph is not None
                                 else None)}


# ----------------------------------------------------------------------------- one config

def graph_checks(concrete):
    """What the issue asks to rule out, read from the traced step graph."""
    ops = flops.needed_ops(concrete.graph)
    types = collections.Counter(op.type for op in ops)
    return {
        "ops": len(ops),
        "float64_ops": sorted({op.type for op in ops
                               if any(t.dtype == tf.float64 for t in op.outputs)}),
        "transposes": types["Transpose"],
        "casts": types["Cast"],
        "nested_functions_or_control_flow": {t: types[t] for t in flops.CONTROL_FLOW_OPS
                                             if types[t]},
        "host_copies": types["_HostSend"] + types["_HostRecv"] + types["Send"]
        + types["Recv"],
        "py_funcs": types["EagerPyFunc"] + types["PyFunc"],
    }



def retrace_count(fn):
    return fn.experimental_get_tracing_count()


def run_config(name, args, log, device="/CPU:0"):
    """Every measurement of one config, with model, data and steps on `device`."""
    with tf.device(device):
        return _run_config(name, args, log, device)


def _run_config(name, args, log, device):
    ceiling.reset_peak_memory(device)
    config = flops.load_config(name, args.set)
    batch_size = args.batch_size
    tf.keras.utils.set_random_seed(0)
    model = build_grdnet(config, compile=True)
    batch = flops.random_batch(config, batch_size)
    result = {"config": name, "overrides": list(args.set),
              "image_size": list(config.data.image_size),
              "batch_size": batch_size, "load_average_start": ceiling.load_average()}
    row_precisions = precisions(args, config)
    reduced_dtypes = sorted({compute_dtype(p) for p in row_precisions} - {"float32"})

    log(f"[{name}] FLOP count")
    counted = flops.model_flops(model, config, batch_size)
    step_gflop = counted["train_step"]["model_gflop"]
    result["flops_per_image"] = counted

    log(f"[{name}] ceiling (before)")
    ceil_before = ceiling.measure_ceiling(args.ceiling_repeats, device, reduced_dtypes)

    step = tf.function(model.train_step)
    log(f"[{name}] train step: {args.warmup} warm-up + {args.steps} timed")
    start = time.perf_counter()
    ceiling.synchronise(step(batch))
    first_step = time.perf_counter() - start
    timing = time_steps(step, batch, args.warmup - 1, args.steps)
    result.update(ceiling.peak_memory(device, "training"))  # model + step only
    seconds = timing.median_wall
    images_per_second = batch_size / seconds
    result["load_average_step"] = ceiling.load_average()

    log(f"[{name}] ceiling (after)")
    ceil_after = ceiling.measure_ceiling(args.ceiling_repeats, device, reduced_dtypes)
    ceilings = (ceil_before, ceil_after)
    achieved = step_gflop * images_per_second
    result.update({
        "images_per_second": round(images_per_second, 3),
        "seconds_per_step_median": round(seconds, 3),
        "seconds_per_step": [round(s, 3) for s in timing.wall],
        "first_step_seconds": round(first_step, 1),
        "step_gflop_per_image": step_gflop,
        **rates(achieved, ceilings),
    })
    cpu_rate = step_gflop * batch_size / timing.median_cpu
    ceiling_cpu_rate = None if ceiling.is_gpu(device) else statistics.mean(
        c["conv2d"]["gflop_per_cpu_second"] for c in ceilings)
    ceiling.cpu_only(result, device,
                     cpu_seconds_per_step_median=round(timing.median_cpu, 3),
                     gflop_per_cpu_second=round(cpu_rate, 1),
                     cpu_ratio_to_conv_ceiling=ceiling_cpu_rate and round(
                         cpu_rate / ceiling_cpu_rate, 3))
    result.update({
        "ceiling_before": ceil_before, "ceiling_after": ceil_after,
        "tracing_count_after_steps": retrace_count(step),
        "graph_checks": graph_checks(step.get_concrete_function(batch)),
    })

    if args.profile:
        log(f"[{name}] profile (2 steps)")
        result["profile"] = profile_steps(step, batch, _slug(name),
                                          graph=step.get_concrete_function(batch).graph,
                                          device=device)
        by_type = counted["train_step"]["by_op_type_gflop"]
        conv_gflop = {"conv forward": by_type.get("Conv2D", 0) + by_type.get("MatMul", 0),
                      "conv backprop input": by_type.get("Conv2DBackpropInput", 0),
                      "conv backprop filter": by_type.get("Conv2DBackpropFilter", 0)}
        for row in result["profile"].get("by_category", []):
            if row["category"] in conv_gflop and row["ms"]:
                # GFLOP per second of op time (ops may overlap: a lower bound of the rate).
                row["gflops"] = round(conv_gflop[row["category"]] * batch_size
                                      / (row["ms"] / 1e3), 1)

    if args.before_after:
        log(f"[{name}] before/after: Keras batch norm")
        result["before_after"] = {"batchnorm": before_after(config, model, batch, step,
                                                            args.before_after_rounds, log,
                                                            device)}

    for precision in row_precisions:
        log(f"[{name}] precision {precision} against float32")
        result.setdefault("precision", []).append(
            precision_row(config, model, batch, step, precision, args.precision_rounds, log,
                          device, step_gflop, ceilings))

    if args.split:
        log(f"[{name}] split: step without each update")
        marginal, marginal_cpu, marginal_gflop = {}, {}, {}
        batch_spec = {k: tf.TensorSpec(v.shape, v.dtype) for k, v in batch.items()}
        for part in ("discriminator", "generator", "segmentator"):
            variant_flops = flops.count_function(step_without(model, part), batch_spec)
            marginal_gflop[part] = step_gflop - variant_flops.model / batch_size / 1e9
            variant = tf.function(step_without(model, part))
            variant_timing = time_steps(variant, batch, 1, args.split_steps)
            marginal[part] = max(seconds - variant_timing.median_wall, 0.0)
            marginal_cpu[part] = max(timing.median_cpu - variant_timing.median_cpu, 0.0)
        splits = {}
        for key, total, parts in (("split_seconds", seconds, marginal),
                                  ("split_cpu_seconds", timing.median_cpu, marginal_cpu)):
            splits[key] = {"shared_forward": round(max(total - sum(parts.values()), 0.0), 3),
                           **{f"{k}_update": round(v, 3) for k, v in parts.items()}}
        result["split_seconds"] = splits["split_seconds"]
        ceiling.cpu_only(result, device, split_cpu_seconds=splits["split_cpu_seconds"],
                         split_share_cpu={k: round(v / timing.median_cpu, 3)
                                          for k, v in splits["split_cpu_seconds"].items()})
        result["split_gflop_per_image"] = {
            "shared_forward": round(step_gflop - sum(marginal_gflop.values()), 3),
            **{f"{k}_update": round(v, 3) for k, v in marginal_gflop.items()}}

    if args.xla:
        log(f"[{name}] XLA step")
        xla_step = model.replica_train_step(jit_compile=True)  # one device: the whole step
        start = time.perf_counter()
        ceiling.synchronise(xla_step(batch))
        compile_seconds = time.perf_counter() - start
        xla_timing = time_steps(xla_step, batch, 1, args.xla_steps)
        xla_seconds = xla_timing.median_wall
        result["xla"] = ceiling.cpu_only(
            {"compile_seconds": round(compile_seconds, 1),
             "seconds_per_step_median": round(xla_seconds, 3),
             "images_per_second": round(batch_size / xla_seconds, 3),
             "achieved_gflops": round(step_gflop * batch_size / xla_seconds, 1),
             "achieved_tflops": float(f"{step_gflop * batch_size / xla_seconds / 1e3:.4g}"),
             "speedup_vs_no_xla": round(seconds / xla_seconds, 3)},
            device, cpu_seconds_per_step_median=round(xla_timing.median_cpu, 3))

    result.update(ceiling.peak_memory(device, "whole_run"))  # + old layers, XLA
    result["load_average_end"] = ceiling.load_average()
    rate = (f"{result['achieved_tflops']:.3g} TFLOP/s" if ceiling.is_gpu(device)
            else f"{achieved:.1f} GFLOP/s")
    log(f"[{name}] {images_per_second:.3f} img/s, {rate} = "
        f"{result['ratio_to_conv_ceiling']:.0%} of the conv ceiling "
        f"{result['ceiling_conv2d_gflops']:.1f} GFLOP/s")
    return result


def _slug(config_name):
    """"paper" -> "paper", "configs/tiny.py" -> "tiny"."""
    return os.path.splitext(os.path.basename(config_name))[0]


def main(args):
    device = ceiling.device_or_exit(args.device)  # before any op (GPU memory growth)
    if args.inter_op:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op)
    if args.intra_op:
        tf.config.threading.set_intra_op_parallelism_threads(args.intra_op)

    def log(message):
        print(f"{time.strftime('%H:%M:%S')} load {ceiling.load_average()}: {message}",
              file=sys.stderr, flush=True)

    configs = args.configs.split(",")
    result = {"benchmark": "train_step", **ceiling.cpu_info(), **ceiling.device_info(device),
              "tf_version": tf.__version__}
    ceiling.cpu_only(
        result, device,
        threads={"inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
                 "intra_op": tf.config.threading.get_intra_op_parallelism_threads()})
    result.update(load_average=ceiling.load_average(), results=[])
    if len(configs) == 1:
        result["waited_for_load"] = ceiling.wait_for_load(args.wait_for_load, log=log)
        result["results"].append(run_config(configs[0], args, log, device))
    else:
        # One process per config: peak RSS and allocator state of one config do not leak into
        # the next. Each child waits for a quiet machine itself.
        for name in configs:
            argv = [a for a in sys.argv[1:] if not a.startswith(("--configs", "--name"))]
            child = subprocess.run(
                [sys.executable, os.path.abspath(__file__), *argv, f"--configs={name}",
                 f"--name={args.name}_{_slug(name)}"], stdout=subprocess.PIPE, text=True,
                check=True)
            child_result = json.loads(child.stdout.strip().splitlines()[-1])
            result["results"].append({"waited_for_load": child_result["waited_for_load"],
                                      **child_result["results"][0]})
    result["load_average_end"] = ceiling.load_average()
    ceiling.write_result(args.name, result)


if __name__ == "__main__":
    main(ARGS)
