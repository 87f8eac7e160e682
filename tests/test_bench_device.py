"""bench/train_step.py --device: device resolution, the no-GPU error, the same-run ceiling's
fields on /CPU:0, and the rate fields the GPU path reports (no GPU is faked)."""
import argparse
import math
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, "bench")
sys.path.insert(0, BENCH)

import ceiling  # noqa: E402  (bench/ceiling.py)
import tensorflow as tf  # noqa: E402

HAS_GPU = bool(tf.config.list_physical_devices("GPU"))


def test_resolve_device():
    assert ceiling.resolve_device("cpu") == "/CPU:0"
    assert ceiling.device_info("/CPU:0") == {"device": "/CPU:0"}
    with pytest.raises(ValueError, match=r"--device=tpu: must be one of cpu, gpu"):
        ceiling.resolve_device("tpu")


@pytest.mark.skipif(HAS_GPU, reason="a GPU is visible: --device=gpu is valid here")
def test_gpu_without_gpu_is_one_error_line_and_exit_2(tmp_path):
    with pytest.raises(ValueError, match=r"^--device=gpu: no GPU visible to TensorFlow "
                                         r"\(tf\.config\.list_physical_devices\('GPU'\) "
                                         r"is empty; "):
        ceiling.resolve_device("gpu")
    name = "test_bench_device_never_written"
    proc = subprocess.run(
        [sys.executable, os.path.join(BENCH, "train_step.py"), "--device=gpu",
         "--configs=cpu_small", f"--name={name}"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith(
        "error: --device=gpu: no GPU visible to TensorFlow "
        "(tf.config.list_physical_devices('GPU') is empty; ")
    assert "FLOP count" not in proc.stderr  # no work started
    assert not os.path.exists(os.path.join(ceiling.RESULTS_DIR, f"{name}.json"))


def _check_rate(row, flops):
    assert row["gflop"] == float(f"{flops / 1e9:.4g}")
    for field in ("gflops_median", "tflops_median", "gflops_best", "ms_median",
                  "gflop_per_cpu_second"):
        assert math.isfinite(row[field]) and row[field] > 0, (field, row)
    # The same rate in two units, up to their rounding (0.1 GFLOP/s; 4 significant digits).
    assert abs(row["tflops_median"] * 1e3 - row["gflops_median"]) <= (
        0.05 + 1e-3 * row["gflops_median"])


def test_ceiling_on_cpu_tiny_shapes():
    # Big enough (75 and 34 MFLOP) that a rate rounded to 0.1 GFLOP/s stays > 0 under load.
    out = ceiling.measure_ceiling(repeats=2, device="/CPU:0", reduced_dtypes=("bfloat16",),
                                  conv_shape=(4, 32, 32, 32), matmul_n=256)
    conv_flops = 2 * 4 * 32 * 32 * 9 * 32 * 32
    assert set(out) == {"conv2d", "matmul", "conv2d_bfloat16", "load_average"}
    assert out["conv2d"]["shape"] == "[4,32,32,32] * [3,3,32,32]"
    assert (out["conv2d"]["dtype"], out["conv2d_bfloat16"]["dtype"]) == ("float32",
                                                                         "bfloat16")
    _check_rate(out["conv2d"], conv_flops)
    _check_rate(out["conv2d_bfloat16"], conv_flops)
    _check_rate(out["matmul"], 2 * 256 ** 3)


def test_cpu_only_fields():
    assert ceiling.cpu_only({"a": 1}, "/CPU:0", cpu_seconds=2.0) == {"a": 1,
                                                                     "cpu_seconds": 2.0}
    assert ceiling.cpu_only({"a": 1}, "/GPU:0", cpu_seconds=2.0, threads={}) == {
        "a": 1, "not_applicable_on_gpu": ["cpu_seconds", "threads"]}


def test_step_rates_and_precisions():
    import train_step  # bench/train_step.py (arguments are parsed only when run)
    import flops

    ceilings = [{"conv2d": {"gflops_median": 1000.0, "dtype": "float32"},
                 "conv2d_float16": {"gflops_median": 8000.0, "dtype": "float16"}},
                {"conv2d": {"gflops_median": 3000.0, "dtype": "float32"},
                 "conv2d_float16": {"gflops_median": 12000.0, "dtype": "float16"}}]
    assert train_step.rates(500.0, ceilings) == {
        "achieved_gflops": 500.0, "achieved_tflops": 0.5, "ceiling_conv2d_gflops": 2000.0,
        "ceiling_conv2d_tflops": 2.0, "ceiling_dtype": "float32",
        "ratio_to_conv_ceiling": 0.25}
    assert train_step.rates(2500.0, ceilings, "conv2d_float16")["ratio_to_conv_ceiling"] \
        == 0.25
    config = flops.load_config("cpu_small", ["train.precision=mixed_float16"])
    args = argparse.Namespace(precisions="mixed_bfloat16")
    assert train_step.precisions(args, config) == ["mixed_bfloat16", "mixed_float16"]
    assert [train_step.compute_dtype(p) for p in train_step.precisions(args, config)] == [
        "bfloat16", "float16"]
    assert train_step.precisions(argparse.Namespace(precisions=""),
                                 flops.load_config("cpu_small")) == []
