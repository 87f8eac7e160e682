"""Benchmark: the exported SavedModel's `serving_default` (latency, throughput, FLOP rate),
and (--formats) every export format at batch 1 with the int8 LiteRT model's AUROC.

    .venv/bin/python bench/serving.py --formats [--quality_run=RUN --quality_data=DIR]
        -> bench/results/serving_formats.json: batch-1 latency of saved_model, onnx,
           litert and litert_int8 on the config's model (random weights; 1 thread for
           onnxruntime and LiteRT, TF's default pools for the SavedModel); with a trained
           run and its category, the image AUROC of each format on the test split, the
           int8 model calibrated on the run's training normals (train/good).

    .venv/bin/python bench/serving.py [--config=paper] [--calls=30] [--batches=8,32]
        [--xla] [--profile] [--wait_for_load=0]

1. Builds a run directory with the paper architecture (configs/paper.py, 256x256) and
   random weights (speed does not depend on the weights): config.json, a training
   checkpoint, calibration.json, like tests/helpers_run.make_tiny_run; exports it with
   `grdnet_tf.serving.export_lib.export_run` into a temporary folder.
2. Inspects the SavedModel: variables saved, op types of the `serving_default` function
   closure, training-only ops (variable assignments, batch norm in training mode), float64.
3. Loads it with `tf.saved_model.load` (what a server does) and times `serving_default`
   on uint8 [B, 256, 256, 3]: batch 1 latency (median and p95 of ``--calls`` calls after
   warm-up, ms per image) and throughput at each of ``--batches``.
4. Retracing: the exporter's tf.function is called at batch 1, 8 and 32 and two image sizes;
   its tracing count must stay 1 (the signature has None dimensions). The loaded signature
   is one ConcreteFunction.
5. (--xla) the same scoring as an in-process tf.function with and without jit_compile
   (the model part only when the full scoring graph cannot be compiled).
   (--before_after) the same run exported with keras.layers.BatchNormalization (before
   grdnet_tf's fused batch norm), old and new signatures called alternately.
   (--precisions=mixed_bfloat16) the same run exported at each precision: output
   differences, and float32 ("old") and reduced ("new") signatures called alternately.
   (--precision_quality_run=RUN --quality_data=DIR --precisions=...) only: a trained run
   exported at float32 and each precision, image/pixel AUROC and AUPRO on DIR's test split.
6. FLOPs per image (bench/flops.py on the in-process scoring at a static shape) give the
   achieved GFLOP/s, compared with the conv ceiling measured in the same process.

The JSON result is the last line of stdout and bench/results/serving.json.
"""
import argparse
import collections
import os
import statistics
import sys
import tempfile
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)
sys.path.insert(0, os.path.dirname(BENCH_DIR))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.core.protobuf import saved_model_pb2  # noqa: E402

import ceiling  # noqa: E402
import flops  # noqa: E402
from grdnet_tf import config as config_lib  # noqa: E402
from grdnet_tf import keys, run_dir, scoring  # noqa: E402
from grdnet_tf.models import build_grdnet  # noqa: E402
from grdnet_tf.serving import export_lib  # noqa: E402
from grdnet_tf.training import checkpoints  # noqa: E402
from train_step import keras_batchnorm, profile_steps  # noqa: E402

TRAINING_ONLY_OPS = ("AssignVariableOp", "AssignAddVariableOp", "AssignSubVariableOp",
                     "ResourceApplyAdam", "FusedBatchNormGradV3", "Conv2DBackpropInput",
                     "Conv2DBackpropFilter")


def make_run(config, model_dir, seed=0, threshold=0.5):
    """A run directory with random weights (config.json, checkpoints/, calibration.json)."""
    import keras

    keras.utils.set_random_seed(seed)
    model = build_grdnet(config, compile=True)
    run_dir.write_run_config(config, model_dir)
    state = checkpoints.TrainState()
    manager = tf.train.CheckpointManager(checkpoints.training_checkpoint(model, state),
                                         os.path.join(model_dir, run_dir.CHECKPOINT_DIR),
                                         max_to_keep=1)
    manager.save()
    run_dir.write_json(os.path.join(model_dir, run_dir.CALIBRATION_JSON),
                           {"threshold": threshold, "quantile": 0.99, "num_images": 0})
    return model


def _called_functions(node_defs):
    for node in node_defs:
        for value in node.attr.values():
            if value.HasField("func"):
                yield value.func.name
            for func in value.list.func:
                yield func.name


def inspect_saved_model(version_dir, signature="serving_default"):
    """Op types of one signature's function closure, variables, training ops, float64."""
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(version_dir, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    meta = proto.meta_graphs[0]
    library = {f.signature.name: f for f in meta.graph_def.library.function}
    outputs = {t.name.split(":")[0] for t in meta.signature_def[signature].outputs.values()}
    nodes = {n.name: n for n in meta.graph_def.node}
    todo = list(_called_functions(nodes[n] for n in outputs if n in nodes))
    seen, op_types = set(), collections.Counter()
    doubles = []
    while todo:
        name = todo.pop()
        if name in seen or name not in library:
            continue
        seen.add(name)
        function = library[name]
        for node in function.node_def:
            op_types[node.op] += 1
            if any(v.type == tf.float64.as_datatype_enum for v in node.attr.values()):
                doubles.append(f"{name}/{node.name}")
            if node.op.startswith("FusedBatchNorm") and node.attr["is_training"].b:
                op_types["FusedBatchNorm(is_training=True)"] += 1
        todo.extend(_called_functions(function.node_def))
    variables_dir = os.path.join(version_dir, "variables")
    reader = tf.train.load_checkpoint(os.path.join(variables_dir, "variables"))
    shapes = {k: v for k, v in reader.get_variable_to_shape_map().items()
              if k.endswith("VARIABLE_VALUE")}
    return {
        "functions_in_signature": len(seen),
        "ops_in_signature": sum(op_types.values()),
        "op_types": dict(op_types.most_common(25)),
        "training_only_ops": {k: op_types[k] for k in TRAINING_ONLY_OPS
                              + ("FusedBatchNorm(is_training=True)",) if op_types[k]},
        "float64_nodes": doubles[:10],
        "saved_variables": len(shapes),
        "saved_parameters": int(sum(np.prod(s) for s in shapes.values())),
        "variables_mb": round(sum(os.path.getsize(os.path.join(variables_dir, f))
                                  for f in os.listdir(variables_dir)) / 2 ** 20, 1),
        "has_discriminator_or_second_encoder": any(
            "discriminator" in k or "second_encoder" in k for k in shapes),
    }


def random_images(batch, size, seed=0):
    rng = np.random.default_rng(seed)
    return tf.constant(rng.integers(0, 256, (batch, size[0], size[1], 3), dtype=np.uint8))


def latency(fn, images, calls, warmup=3):
    """ms per call: median and p95 over `calls` calls after `warmup`."""
    timing = ceiling.timed_calls(lambda: fn(images=images), calls, warmup=warmup)
    ms = sorted(1e3 * s for s in timing.wall)
    p95 = ms[min(len(ms) - 1, int(np.ceil(0.95 * len(ms))) - 1)]
    return {"ms_median": round(statistics.median(ms), 1), "ms_p95": round(p95, 1),
            "cpu_ms_median": round(1e3 * timing.median_cpu, 1), "calls": calls}


def throughput(fn, images, calls, warmup=1):
    timing = ceiling.timed_calls(lambda: fn(images=images), calls, warmup=warmup)
    batch = int(images.shape[0])
    return {"images_per_second": round(batch / timing.median_wall, 2),
            "ms_per_image": round(1e3 * timing.median_wall / batch, 1),
            "cpu_ms_per_image": round(1e3 * timing.median_cpu / batch, 1), "calls": calls}


def xla_comparison(model, config, batches, calls):
    """In-process scoring with and without jit_compile, per batch size (ms per image)."""
    size = tuple(config.data.image_size)
    params = scoring.ScoringParams.from_run(config)

    def full(images):
        return scoring.score_images(model, images, params, 0.5)

    def core(images):  # the networks only: float [B, H, W, C] at the model size
        return model(images, training=False)

    out = {}
    for part, fn, make in (
            ("full_scoring", full, lambda b: random_images(b, size)),
            ("networks_only", core,
             lambda b: tf.cast(random_images(b, size), tf.float32) / 255.0)):
        rows = {}
        for jit in (False, True):
            compiled = tf.function(fn, jit_compile=jit)
            for batch in batches:
                images = make(batch)
                try:
                    start = time.perf_counter()
                    compiled(images)
                    first = time.perf_counter() - start
                    timing = ceiling.timed_calls(lambda: compiled(images), calls, warmup=1)
                except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as e:
                    rows[f"xla={jit}"] = {"error": str(e).splitlines()[0][:200]}
                    break
                rows.setdefault(f"xla={jit}", {})[f"batch{batch}"] = {
                    "ms_per_image": round(1e3 * timing.median_wall / batch, 1),
                    "cpu_ms_per_image": round(1e3 * timing.median_cpu / batch, 1),
                    "first_call_seconds": round(first, 1)}
        out[part] = rows
    return out


def before_after(config, tmp, new_fn, size, rounds):
    """serving_default of the same run exported with keras.layers.BatchNormalization.

    The old and new signatures are called alternately (same load); medians, ms per image.
    """
    with keras_batchnorm():
        make_run(config, os.path.join(tmp, "run_keras_bn"))
        version_dir = export_lib.export_run(os.path.join(tmp, "run_keras_bn"),
                                            os.path.join(tmp, "export_keras_bn"))
    old_fn = tf.saved_model.load(version_dir).signatures["serving_default"]
    out = {"old": "keras.layers.BatchNormalization", "rounds": rounds,
           "old_saved_model_op_types": {
               k: v for k, v in inspect_saved_model(version_dir)["op_types"].items()
               if k in ("FusedBatchNormV3", "Mul", "AddV2", "Rsqrt", "Sub")}}
    out.update(_alternate(old_fn, new_fn, size, rounds))
    return out


def _alternate(old_fn, new_fn, size, rounds):
    """Two signatures called alternately at batch 1 and 8 (same load); ms per image."""
    out = {}
    for batch in (1, 8):
        images = random_images(batch, size)
        old_fn(images=images), new_fn(images=images)
        old_timing, new_timing = ceiling.alternating_calls(
            [lambda: old_fn(images=images), lambda: new_fn(images=images)], rounds)
        out[f"batch{batch}"] = {
            "old_ms_per_image": round(1e3 * old_timing.median_wall / batch, 1),
            "new_ms_per_image": round(1e3 * new_timing.median_wall / batch, 1),
            "speedup_wall": round(old_timing.median_wall / new_timing.median_wall, 3),
            "speedup_cpu": round(old_timing.median_cpu / new_timing.median_cpu, 3)}
    out["load_average"] = ceiling.load_average()
    return out


def precision_comparison(run_path, tmp, float32_fn, size, precision, rounds):
    """serving_default of the same run exported at `precision` ("new") against float32
    ("old"): output differences on random images, then the two called alternately."""
    version_dir = export_lib.export_run(run_path, os.path.join(tmp, f"export_{precision}"),
                                        precision=precision)
    fn = tf.saved_model.load(version_dir).signatures["serving_default"]
    images = random_images(4, size, seed=1)
    reference, reduced = float32_fn(images=images), fn(images=images)
    def difference(key):
        return float(f"{float(tf.reduce_max(tf.abs(reduced[key] - reference[key]))):.3g}")
    out = {"precision": precision, "rounds": rounds, "max_abs_difference": {
        key: difference(key) for key in (keys.ANOMALY_SCORE, keys.ANOMALY_MAP)}}
    out.update(_alternate(float32_fn, fn, size, rounds))
    return out


def export_formats(run_path, tmp, size, representative):
    """{format: callable(images=uint8 [1, h, w, 3]) -> outputs} of every export format (the
    int8 LiteRT model calibrated on `representative`), and export seconds per format."""
    from grdnet_tf.serving import edge

    functions, seconds = {}, {}
    for export_format in ("saved_model", "onnx", "litert"):
        start = time.perf_counter()
        version_dir = export_lib.export_run(run_path, os.path.join(tmp, "formats"),
                                            export_format=export_format,
                                            input_size=None if export_format != "litert"
                                            else size)
        seconds[export_format] = round(time.perf_counter() - start, 1)
        if export_format == "saved_model":
            functions[export_format] = tf.saved_model.load(version_dir).signatures[
                "serving_default"]
        else:
            runner = edge.runner(export_format, os.path.join(
                version_dir, edge.FILENAMES[export_format]))
            functions[export_format] = lambda images, r=runner: r(np.asarray(images))
    loaded = run_dir.load_for_inference(run_path)
    params = scoring.ScoringParams.from_run(loaded.config, loaded.calibration)
    path = os.path.join(tmp, "int8.tflite")
    start = time.perf_counter()
    edge.write_litert(loaded.model, params, scoring.Decision.from_run(loaded.calibration),
                      path, size, representative=representative)
    seconds["litert_int8"] = round(time.perf_counter() - start, 1)
    int8 = edge.runner("litert", path)
    functions["litert_int8"] = lambda images: int8(np.asarray(images))
    sizes = {"litert_int8_mb": round(os.path.getsize(path) / 2 ** 20, 2)}
    return functions, seconds, sizes


def _test_split(data_dir):
    """The test samples of a category and their images as the signatures take them (RGB
    uint8, each at its own size)."""
    from grdnet_tf.data import io, mvtec

    samples = mvtec.index_test(data_dir)
    return samples, [io.read_image(s.path, None, 3) for s in samples]


def _serve_each(fn, images):
    """(scores [N], maps [N x (h, w)]) of a serving function called on one image at a time."""
    scores, maps = [], []
    for image in images:
        outputs = fn(images=tf.constant(image[None]))
        scores.append(float(np.asarray(outputs["anomaly_score"])[0]))
        maps.append(np.asarray(outputs["anomaly_map"])[0])
    return np.array(scores), maps


def format_quality(run_path, data_dir, tmp):
    """Image AUROC on the test split of every format (LiteRT at the first test image's
    size; images of another size are counted and left out)."""
    from grdnet_tf.data import io, mvtec
    from grdnet_tf.evaluation import metrics as metrics_lib

    samples, images = _test_split(data_dir)
    size = images[0].shape[:2]
    keep = [i for i, image in enumerate(images) if image.shape[:2] == size]
    config = run_dir.load_run_config(run_path)
    train, _ = mvtec.index_train(data_dir, val_fraction=config.data.val_fraction,
                                 seed=config.seed)
    normals = [io.read_image(s.path, None, 3) for s in train[:64]]
    normals = [n for n in normals if n.shape[:2] == size]
    functions, seconds, sizes = export_formats(run_path, os.path.join(tmp, "quality"), size,
                                               normals)
    labels = [samples[i].label for i in keep]
    out = {"data_dir": data_dir, "run": run_path, "test_images": len(keep),
           "left_out_other_size": len(images) - len(keep), "input_size": list(size),
           "int8_calibration_images": len(normals), "export_seconds": seconds, **sizes}
    reference = None
    for name, fn in functions.items():
        scores, _ = _serve_each(fn, [images[i] for i in keep])
        if reference is None:
            reference = scores
        out[name] = {"image_auroc": round(metrics_lib.image_auroc(labels, scores), 4),
                     "max_abs_score_diff_vs_saved_model": float(np.abs(scores - reference).max())}
    return out


def precision_quality(run_path, data_dir, precisions, tmp):
    """Image AUROC, pixel AUROC and AUPRO on the test split of a trained run exported as a
    SavedModel at float32 and at each of ``precisions`` (serving_default, one image per call,
    every image at its own size), and the largest score and map differences from float32."""
    from grdnet_tf.data import io
    from grdnet_tf.evaluation import metrics as metrics_lib

    channels = int(run_dir.load_run_config(run_path).data.channels)
    samples, images = _test_split(data_dir)
    masks = [io.read_mask(s.mask_path, image.shape[:2]) if s.mask_path else
             np.zeros(image.shape[:2], np.uint8) for s, image in zip(samples, images)]
    labels = [s.label for s in samples]
    out = {"data_dir": data_dir, "run": run_path, "test_images": len(samples),
           "channels": channels}
    reference = None
    for precision in ("float32", *precisions):
        version_dir = export_lib.export_run(run_path, os.path.join(tmp, f"q_{precision}"),
                                            precision=precision)
        fn = tf.saved_model.load(version_dir).signatures["serving_default"]
        scores, maps = _serve_each(fn, images)
        entry = {"image_auroc": round(metrics_lib.image_auroc(labels, scores), 4),
                 "pixel_auroc": round(metrics_lib.pixel_auroc(masks, maps), 4),
                 "aupro": round(metrics_lib.aupro(masks, maps), 4)}
        if reference is None:
            reference = (scores, maps)
        else:
            entry["max_abs_score_diff_vs_float32"] = float(np.abs(scores - reference[0]).max())
            entry["max_abs_map_diff_vs_float32"] = float(max(
                np.abs(m - r).max() for m, r in zip(maps, reference[1])))
        out[precision] = entry
    return out


def formats_main(args, log):
    """--formats: batch-1 latency of every format (+ AUROC with --quality_run)."""
    config = flops.load_config(args.config)
    size = tuple(config.data.image_size)
    result = {"benchmark": "serving_formats", "config": args.config, "image_size": list(size),
              **ceiling.cpu_info(), "tf_version": tf.__version__,
              "load_average": ceiling.load_average(), "calls": args.calls}
    with tempfile.TemporaryDirectory() as tmp:
        make_run(config, os.path.join(tmp, "run"))
        rng = np.random.default_rng(1)
        representative = [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(8)]
        log("exporting every format (random weights)")
        functions, seconds, sizes = export_formats(os.path.join(tmp, "run"), tmp, size,
                                                   representative)
        result["export_seconds"] = seconds
        result.update(sizes)
        images = random_images(1, size)
        latencies = {}
        for name, fn in functions.items():
            log(f"batch 1 latency: {name}")
            latencies[name] = latency(fn, images, args.calls)
        result["batch1"] = latencies
        result["load_average_end"] = ceiling.load_average()
        if args.quality_run:
            log("AUROC of every format on the trained run")
            result["quality"] = format_quality(args.quality_run, args.quality_data, tmp)
    ceiling.write_result("serving_formats", result)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--formats", action="store_true",
                        help="only the per-format batch-1 latency (serving_formats.json)")
    parser.add_argument("--quality_run", default="", help="--formats: a trained run ...")
    parser.add_argument("--quality_data", default="", help="... and its category folder")
    parser.add_argument("--config", default="paper")
    parser.add_argument("--calls", type=int, default=30, help="batch-1 latency calls")
    parser.add_argument("--batches", default="8,32", help="throughput batch sizes")
    parser.add_argument("--throughput_calls", type=int, default=5)
    parser.add_argument("--xla", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--before_after", action=argparse.BooleanOptionalAction,
                        default=True, help="compare with an export using Keras batch norm")
    parser.add_argument("--ceiling_repeats", type=int, default=10)
    parser.add_argument("--precisions", default="mixed_bfloat16",
                        help="comma-separated export precisions timed against float32")
    parser.add_argument("--wait_for_load", type=float, default=0,
                        help="seconds to wait at most for a load average below 1.5")
    parser.add_argument("--precision_quality_run", default="",
                        help="a trained run: image/pixel AUROC and AUPRO of its SavedModel at "
                             "float32 and each --precisions on --quality_data's test split")
    parser.add_argument("--name", default="serving", help="bench/results/<name>.json")
    args = parser.parse_args()

    def log(message):
        print(f"{time.strftime('%H:%M:%S')} load {ceiling.load_average()}: {message}",
              file=sys.stderr, flush=True)

    waited = ceiling.wait_for_load(args.wait_for_load, log=log)
    if args.precision_quality_run:
        with tempfile.TemporaryDirectory() as tmp:
            result = {"benchmark": "serving_precision_quality", "tf_version": tf.__version__,
                      **precision_quality(args.precision_quality_run, args.quality_data,
                                          list(filter(None, args.precisions.split(","))),
                                          tmp)}
        ceiling.write_result(args.name, result)
        return
    if args.formats:
        formats_main(args, log)
        return
    config = flops.load_config(args.config)
    size = tuple(config.data.image_size)
    batches = [int(b) for b in args.batches.split(",")]
    result = {"benchmark": "serving", "config": args.config, "image_size": list(size),
              **ceiling.cpu_info(), "tf_version": tf.__version__, "waited_for_load": waited,
              "load_average": ceiling.load_average()}

    with tempfile.TemporaryDirectory() as tmp:
        log("building and exporting a run with random weights")
        model = make_run(config, os.path.join(tmp, "run"))
        start = time.perf_counter()
        version_dir = export_lib.export_run(os.path.join(tmp, "run"), os.path.join(tmp, "export"))
        result["export_seconds"] = round(time.perf_counter() - start, 1)
        result["saved_model"] = inspect_saved_model(version_dir)
        result["saved_model"]["inference_parameters_in_process"] = int(sum(
            net.count_params() for net in (model.generator.encoder, model.generator.decoder,
                                           model.segmentator)))

        log("FLOP count (in-process scoring, static shape)")
        loaded_run = run_dir.load_for_inference(os.path.join(tmp, "run"))
        image_spec = tf.TensorSpec((1, *size, 3), tf.uint8)
        counted = flops.count_function(
            lambda images: scoring.score_images(
                loaded_run.model, images, scoring.ScoringParams.from_run(config), 0.5),
            image_spec)
        gflop = counted.model / 1e9
        result["flops_per_image"] = {"model_gflop": round(gflop, 3),
                                     "other_gflop": round(counted.other / 1e9, 3)}

        log("ceiling (before)")
        ceil_before = ceiling.measure_ceiling(args.ceiling_repeats)

        log("loading the SavedModel")
        start = time.perf_counter()
        loaded = tf.saved_model.load(version_dir)
        fn = loaded.signatures["serving_default"]
        result["load_seconds"] = round(time.perf_counter() - start, 1)
        start = time.perf_counter()
        fn(images=random_images(1, size))
        result["first_call_seconds"] = round(time.perf_counter() - start, 2)

        log(f"batch 1 latency ({args.calls} calls)")
        result["batch1"] = latency(fn, random_images(1, size), args.calls)
        result["batch1"]["achieved_gflops"] = round(gflop / result["batch1"]["ms_median"] * 1e3,
                                                    1)
        for batch in batches:
            log(f"batch {batch} throughput")
            row = throughput(fn, random_images(batch, size), args.throughput_calls)
            row["achieved_gflops"] = round(gflop * row["images_per_second"], 1)
            result[f"batch{batch}"] = row
        result["load_average_timing"] = ceiling.load_average()

        log("ceiling (after)")
        ceil_after = ceiling.measure_ceiling(args.ceiling_repeats)
        conv_ceiling = statistics.mean([ceil_before["conv2d"]["gflops_median"],
                                        ceil_after["conv2d"]["gflops_median"]])
        result["ceiling_conv2d_gflops"] = round(conv_ceiling, 1)
        for key in ["batch1"] + [f"batch{b}" for b in batches]:
            result[key]["ratio_to_conv_ceiling"] = round(
                result[key]["achieved_gflops"] / conv_ceiling, 3)
        result["ceiling_before"], result["ceiling_after"] = ceil_before, ceil_after

        log("retracing check")
        serve = export_lib.serving_functions(loaded_run.model,
                                             scoring.ScoringParams.from_run(config),
                                             0.5)["serving_default"]
        for batch, shape in ((1, size), (1, size), (8, size), (32, size), (1, (300, 400)),
                             (3, (300, 400)), (1, size)):
            serve(random_images(batch, shape))
        result["retracing"] = {
            "exporter_tracing_count_after_7_calls": serve.experimental_get_tracing_count(),
            "loaded_signature_is_concrete_function": isinstance(
                fn, tf.types.experimental.ConcreteFunction),
            "loaded_signatures": sorted(loaded.signatures.keys())}

        if args.profile:
            log("profile (batch 8, 2 calls)")
            images8 = random_images(8, size)
            result["profile_batch8"] = profile_steps(lambda b: fn(images=b), images8,
                                                     "serving_batch8")
        if args.before_after:
            log("before/after: export with Keras batch norm")
            result["before_after"] = before_after(config, tmp, fn, size, 10)
        for precision in filter(None, args.precisions.split(",")):
            log(f"precision {precision} against float32")
            result.setdefault("precision", []).append(precision_comparison(
                os.path.join(tmp, "run"), tmp, fn, size, precision, 10))
        if args.xla:
            log("XLA comparison (in-process)")
            result["xla"] = xla_comparison(loaded_run.model, config, [1, 8], 5)
    result["peak_rss_mb"] = ceiling.peak_rss_mb()
    result["load_average_end"] = ceiling.load_average()
    ceiling.write_result(args.name, result)


if __name__ == "__main__":
    main()
