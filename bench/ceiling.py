"""Benchmark: this machine's float32 ceiling in TensorFlow (large conv2d and matmul, GFLOP/s).

    .venv/bin/python bench/ceiling.py [--repeats=10] [--no-layer_shapes] [--wait_for_load=0]
        [--device=cpu|gpu] [--dtypes=float32,bfloat16,float16]

The ceiling is what TensorFlow reaches on a large, well-shaped problem right now:
  conv2d  [8, 128, 128, 128] * [3, 3, 128, 128], NHWC, SAME   38.7 GFLOP per call
  matmul  [4096, 4096] @ [4096, 4096]                         137.4 GFLOP per call
timed as tf.functions after one warm-up call, median (and best) over ``--repeats`` calls,
on ``--device`` (cpu: /CPU:0; gpu: /GPU:0, each call synchronised, see `synchronise`);
``--dtypes`` adds the conv2d in reduced precision (the ceiling of a mixed-precision step:
bfloat16 on AVX512_BF16/AMX CPUs, float16 on GPU tensor cores).
With ``--layer_shapes`` it also times forward, backprop-input and backprop-filter of typical
GRD-Net conv shapes (3x3, batch 8), which shows how far small-channel layers fall below
the ceiling. The other benchmarks import `measure_ceiling` and run it in the same process,
so every achieved GFLOP/s is compared with a ceiling measured under the same load.

Also the machine helpers every benchmark uses: the device to run on, load average, waiting
for a quiet machine, peak RSS / GPU memory, writing ``bench/results/<name>.json``. Prints the
JSON result as the last line.
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time

import tensorflow as tf

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
RESULTS_DIR = os.path.join(BENCH_DIR, "results")
FMA_FLOPS_PER_CYCLE = 32   # fp32 per core: 2 x 256-bit FMA pipes (AMD Zen 4; AVX-512 is
                           # executed as 2 x 256 bit) x 8 lanes x 2 FLOPs


# ----------------------------------------------------------------------------- device

DEVICES = {"cpu": "/CPU:0", "gpu": "/GPU:0"}
_SYNCHRONISE = False  # set by resolve_device("gpu"): timed calls wait for the GPU


def resolve_device(device):
    """The TensorFlow device name of a ``--device`` value ("cpu" -> "/CPU:0", "gpu" ->
    "/GPU:0"); raises ValueError with the message a binary prints when it cannot be used.

    Call it before any TensorFlow op: with gpu it turns on memory growth on every GPU
    (otherwise TensorFlow reserves nearly all GPU memory at the first op, and the peak
    memory reported would be the reservation, not the use).
    """
    if device not in DEVICES:
        raise ValueError(f"--device={device}: must be one of {', '.join(DEVICES)}")
    if device == "gpu":
        gpus = tf.config.list_physical_devices("GPU")
        if not gpus:
            raise ValueError(
                "--device=gpu: no GPU visible to TensorFlow "
                "(tf.config.list_physical_devices('GPU') is empty; needs a CUDA build of "
                "TensorFlow, e.g. pip install tensorflow[and-cuda], an NVIDIA driver, and "
                "CUDA_VISIBLE_DEVICES not hiding the GPU)")
        for gpu in gpus:
            tf.config.experimental.set_memory_growth(gpu, True)
        global _SYNCHRONISE
        _SYNCHRONISE = True
    return DEVICES[device]


def device_or_exit(device):
    """`resolve_device` for a benchmark's main: on error one ``error: ...`` line, exit 2."""
    try:
        return resolve_device(device)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)


def is_gpu(device):
    return "GPU" in device.upper()


def device_info(device):
    """{"device": name} and, on a GPU, its device_name and compute_capability."""
    info = {"device": device}
    if is_gpu(device):
        details = tf.config.experimental.get_device_details(
            tf.config.list_physical_devices("GPU")[0])
        capability = details.get("compute_capability")
        info.update(device_name=details.get("device_name", ""),
                    compute_capability=".".join(map(str, capability)) if capability else "")
    return info


def reset_peak_memory(device):
    """Resets the peak-memory counter of `device`: peak RSS on CPU, the allocator's peak on
    a GPU."""
    if is_gpu(device):
        tf.config.experimental.reset_memory_stats(device.lstrip("/"))
    else:
        reset_peak_rss()


def peak_memory(device, suffix):
    """{"peak_rss_mb_<suffix>": ...} and on a GPU also {"gpu_peak_memory_mb_<suffix>": ...}
    (the GPU allocator's peak since the last `reset_peak_memory`; RSS is then the host)."""
    out = {f"peak_rss_mb_{suffix}": peak_rss_mb()}
    if is_gpu(device):
        peak = tf.config.experimental.get_memory_info(device.lstrip("/"))["peak"]
        out[f"gpu_peak_memory_mb_{suffix}"] = round(peak / 2 ** 20, 1)
    return out


def cpu_only(result, device, **fields):
    """Adds CPU-only fields (process CPU seconds, thread pools) to `result` on a CPU; on a GPU
    lists their names under "not_applicable_on_gpu" instead: the process's CPU time there is
    the host thread launching kernels, not the computation."""
    if is_gpu(device):
        result.setdefault("not_applicable_on_gpu", []).extend(fields)
    else:
        result.update(fields)
    return result


# ----------------------------------------------------------------------------- machine state

def load_average():
    """1-minute load average."""
    return round(os.getloadavg()[0], 2)


def wait_for_load(max_seconds, threshold=1.5, poll_seconds=30, log=print):
    """Polls the 1-minute load average until it is below `threshold` or `max_seconds` pass.

    Returns {"waited_seconds", "load_average", "quiet"}; `quiet` False means the machine
    never got below the threshold and the measurement ran anyway.
    """
    start = time.monotonic()
    while True:
        load = load_average()
        waited = time.monotonic() - start
        if load < threshold:
            return {"waited_seconds": round(waited), "load_average": load, "quiet": True}
        if waited >= max_seconds:
            if max_seconds:
                log(f"load average still {load} >= {threshold} after {waited:.0f} s: "
                    f"measuring anyway")
            return {"waited_seconds": round(waited), "load_average": load, "quiet": False}
        log(f"load average {load} >= {threshold}: waiting ({waited:.0f}/{max_seconds} s)")
        time.sleep(poll_seconds)


def reset_peak_rss():
    """Resets the kernel's peak-RSS counter of this process (VmHWM); False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb():
    """Peak resident set size of this process since start or the last reset_peak_rss."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def cpu_info():
    """Model name, core count, current MHz and the nominal fp32 FMA peak in GFLOP/s."""
    model, mhz = "", []
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
        for line in f:
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("cpu MHz"):
                mhz.append(float(line.split(":", 1)[1]))
    cores = os.cpu_count()
    mean_mhz = statistics.mean(mhz) if mhz else 0.0
    return {"cpu": model, "cores": cores, "mhz": round(mean_mhz),
            "nominal_fma_peak_gflops": round(cores * mean_mhz * 1e-3 * FMA_FLOPS_PER_CYCLE, 1)}


def write_result(name, result):
    """Writes bench/results/<name>.json atomically and prints the result as one JSON line."""
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, f"{name}.json")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    os.replace(path + ".tmp", path)
    print(json.dumps(result), flush=True)


class Timing:
    """Wall and process CPU seconds of each timed call.

    CPU seconds (all threads of this process) are much less sensitive than wall seconds to
    other jobs on a shared machine: GFLOP per CPU-second is the load-robust companion of
    GFLOP/s (it also counts the thread pool's spin-waiting, so it is a lower bound).
    """

    def __init__(self):
        self.wall, self.cpu = [], []

    @property
    def median_wall(self):
        return statistics.median(self.wall)

    @property
    def median_cpu(self):
        return statistics.median(self.cpu)


def synchronise(outputs):
    """Blocks until the call that returned `outputs` has run, after `resolve_device("gpu")`.

    GPU kernels run asynchronously: a tf.function returns once its kernels are queued, so
    a GPU timing without this measures the launch. Fetches the scalar outputs (the step's
    losses, as a training loop logs them), then waits for every device
    (tf.test.experimental.sync_devices: the step's variable updates are not outputs). On
    CPU an eager call returns when it has run; nothing is done.
    """
    if not _SYNCHRONISE:
        return
    for tensor in tf.nest.flatten(outputs):
        if isinstance(tensor, tf.Tensor) and tensor.shape.rank == 0:
            tensor.numpy()
    tf.test.experimental.sync_devices()


def timed_calls(fn, repeats, warmup=1):
    """Times `repeats` synchronous calls of `fn` after `warmup` calls; returns a Timing."""
    for _ in range(warmup):
        synchronise(fn())
    timing = Timing()
    for _ in range(repeats):
        cpu, wall = time.process_time(), time.perf_counter()
        synchronise(fn())
        timing.wall.append(time.perf_counter() - wall)
        timing.cpu.append(time.process_time() - cpu)
    return timing


def alternating_calls(fns, rounds):
    """Times the functions alternately (a, b, a, b, ...), `rounds` calls each, so that
    all see the same load; returns one Timing per function."""
    timings = [Timing() for _ in fns]
    for _ in range(rounds):
        for fn, timing in zip(fns, timings):
            one = timed_calls(fn, 1, warmup=0)
            timing.wall += one.wall
            timing.cpu += one.cpu
    return timings


# ----------------------------------------------------------------------------- the ceiling

CONV_SHAPE = (8, 128, 128, 128)  # batch, size, c_in, c_out of the ceiling's 3x3 conv2d
MATMUL_N = 4096


def _conv_case(batch, size, c_in, c_out, kernel=3, stride=1, seed=0, dtype="float32"):
    gen = tf.random.Generator.from_seed(seed)
    x = tf.cast(gen.normal((batch, size, size, c_in)), dtype)
    w = tf.cast(gen.normal((kernel, kernel, c_in, c_out)) * 0.05, dtype)
    out_size = size // stride
    dy = tf.cast(gen.normal((batch, out_size, out_size, c_out)), dtype)
    flops = 2 * batch * out_size * out_size * kernel * kernel * c_in * c_out
    strides = [1, stride, stride, 1]
    forward = tf.function(lambda: tf.nn.conv2d(x, w, strides, "SAME"))
    backprop_input = tf.function(lambda: tf.raw_ops.Conv2DBackpropInput(
        input_sizes=tf.shape(x), filter=w, out_backprop=dy, strides=strides,
        padding="SAME"))
    backprop_filter = tf.function(lambda: tf.raw_ops.Conv2DBackpropFilter(
        input=x, filter_sizes=tf.shape(w), out_backprop=dy, strides=strides,
        padding="SAME"))
    return flops, {"forward": forward, "backprop_input": backprop_input,
                   "backprop_filter": backprop_filter}


def _rate(flops, timing, device="/CPU:0"):
    rate = {"gflops_median": round(flops / timing.median_wall / 1e9, 1),
            "tflops_median": float(f"{flops / timing.median_wall / 1e12:.4g}"),
            "gflops_best": round(flops / min(timing.wall) / 1e9, 1),
            "ms_median": round(1e3 * timing.median_wall, 2)}
    return cpu_only(rate, device,
                    gflop_per_cpu_second=round(flops / timing.median_cpu / 1e9, 1))


def measure_conv_ceiling(repeats=10, device="/CPU:0", dtype="float32", shape=CONV_SHAPE):
    """The 3x3 SAME conv2d of `shape` (batch, size, c_in, c_out) in `dtype` on `device`;
    its "gflops_median" / "tflops_median" is the ceiling a step's rate is divided by."""
    with tf.device(device):
        flops, fns = _conv_case(*shape, dtype=dtype)
        timing = timed_calls(fns["forward"], repeats)
    batch, size, c_in, c_out = shape
    return {"shape": f"[{batch},{size},{size},{c_in}] * [3,3,{c_in},{c_out}]",
            "dtype": dtype, "gflop": float(f"{flops / 1e9:.4g}"),
            **_rate(flops, timing, device)}


def measure_ceiling(repeats=10, device="/CPU:0", reduced_dtypes=(), conv_shape=CONV_SHAPE,
                    matmul_n=MATMUL_N):
    """Large float32 conv2d and matmul on `device`: {"conv2d": {...}, "matmul": {...}}, and
    {"conv2d_<dtype>": {...}} for each of `reduced_dtypes` ("bfloat16", "float16").

    "gflops_median" of conv2d is the ceiling the other benchmarks divide by (of
    conv2d_<dtype> for a step computing in that dtype).
    """
    out = {"conv2d": measure_conv_ceiling(repeats, device, shape=conv_shape)}
    with tf.device(device):
        gen = tf.random.Generator.from_seed(1)
        a, b = gen.normal((matmul_n, matmul_n)), gen.normal((matmul_n, matmul_n))
        matmul_fn = tf.function(lambda: tf.linalg.matmul(a, b))
        mm_timing = timed_calls(matmul_fn, max(3, repeats // 2))
    mm_flops = 2 * matmul_n ** 3
    out["matmul"] = {"shape": f"[{matmul_n},{matmul_n}] @ [{matmul_n},{matmul_n}]",
                     "gflop": float(f"{mm_flops / 1e9:.4g}"),
                     **_rate(mm_flops, mm_timing, device)}
    for dtype in reduced_dtypes:
        out[f"conv2d_{dtype}"] = measure_conv_ceiling(repeats, device, dtype, conv_shape)
    return {**out, "load_average": load_average()}


# Representative 3x3 convolutions of the paper-size networks (batch 8): (name, size, c_in,
# c_out, stride).
LAYER_SHAPES = (
    ("seg full-res 64->32 @256", 256, 64, 32, 1),
    ("gen/seg full-res 32->32 @256", 256, 32, 32, 1),
    ("down 32->32 stride 2 @256", 256, 32, 32, 2),
    ("64->64 @128 (seg)", 128, 64, 64, 1),
    ("128->128 @64", 64, 128, 128, 1),
    ("256->256 @16", 16, 256, 256, 1),
)


def measure_layer_shapes(repeats=5, device="/CPU:0"):
    rows = []
    for name, size, c_in, c_out, stride in LAYER_SHAPES:
        with tf.device(device):
            flops, fns = _conv_case(8, size, c_in, c_out, stride=stride)
            row = {"layer": name, "gflop": round(flops / 1e9, 3)}
            for kind, fn in fns.items():
                row[kind + "_gflops"] = _rate(flops, timed_calls(fn, repeats),
                                              device)["gflops_median"]
        rows.append(row)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--layer_shapes", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--device", default="cpu", help="cpu (/CPU:0) or gpu (/GPU:0)")
    parser.add_argument("--dtypes", default="float32",
                        help="comma-separated conv2d dtypes: float32 (always) and any of "
                             "bfloat16, float16")
    parser.add_argument("--wait_for_load", type=float, default=0,
                        help="seconds to wait at most for a load average below 1.5")
    args = parser.parse_args()
    device = device_or_exit(args.device)
    reduced = [d for d in args.dtypes.split(",") if d and d != "float32"]
    for dtype in reduced:
        if dtype not in ("bfloat16", "float16"):
            print(f"error: --dtypes: {dtype} is not one of float32, bfloat16, float16",
                  file=sys.stderr, flush=True)
            sys.exit(2)
    waited = wait_for_load(args.wait_for_load, log=lambda m: print(m, file=sys.stderr))
    result = {"benchmark": "ceiling", **cpu_info(), **device_info(device),
              "load_average_start": load_average(),
              "waited_for_load": waited, "tf_version": tf.__version__,
              "ceiling": measure_ceiling(args.repeats, device, reduced)}
    if args.layer_shapes:
        result["layer_shapes"] = measure_layer_shapes(device=device)
    result["load_average_end"] = load_average()
    write_result("ceiling" if device == DEVICES["cpu"] else "ceiling_gpu", result)


if __name__ == "__main__":
    main()
