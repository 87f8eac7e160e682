"""The installed console scripts (setup.py entry points), run in subprocesses: each --help
lists the binary's own flags, bad input gives one `error:` line and exit status 2, and a
short training and evaluation print progress without TensorFlow's start-up noise. The
scripts come from the environment's bin folder (`pip install -e .`, as `make test` does);
PYTHONPATH points them at this checkout. Also: the wheel ships the configs and declares
every imported dependency.
"""
import ast
import importlib.metadata
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from helpers_config import REPO_ROOT

BIN = os.path.dirname(sys.executable)
SCRIPTS = ("grdnet-train", "grdnet-eval", "grdnet-calibrate", "grdnet-predict",
           "grdnet-export", "grdnet-demo-data", "grdnet-roi")
# Lines of TensorFlow's start-up and checkpointing that must not reach the console.
NOISE = ("oneDNN", "cuInit", "cuda drivers", "absl::InitializeLog", "Sharding callback",
         "cpu_feature_guard", "I0000", "W0000", "E0000")


def script(name):
    path = os.path.join(BIN, name)
    if not os.path.exists(path):
        pytest.fail(f"{path} is not installed: run `pip install -e .` (make test does)")
    return path


def env():
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPP")}
    environment["PYTHONPATH"] = REPO_ROOT
    return environment


def start(args, cwd):
    return subprocess.Popen([script(args[0]), *args[1:]], cwd=cwd, env=env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def outputs(processes, timeout=300):
    results = {}
    try:
        for name, p in processes.items():
            out, err = p.communicate(timeout=timeout)
            results[name] = (p.returncode, out, err)
    finally:
        for p in processes.values():
            if p.poll() is None:
                p.kill()
    return results


HELP = {
    "grdnet-train": ["--config:", "--model_dir:", "--data_dir:", "named config (cpu_small"],
    "grdnet-eval": ["--model_dir:", "--data_dir:", "--output_dir:", "--checkpoint:",
                    "--threshold:", "--batch_size:", "--num_overlays:", "--[no]use_roi:"],
    "grdnet-calibrate": ["--model_dir:", "--data_dir:", "--checkpoint:",
                         "scoring.calibration_mask_area_min"],
    "grdnet-predict": ["--model_dir:", "--input:", "--output_dir:", "--[no]heatmaps:",
                       "--[no]skip_bad_files:", "--roi:"],
    "grdnet-export": ["--model_dir:", "--export_dir:", "--version:", "--[no]overwrite:",
                      "--roi:"],
    "grdnet-demo-data": ["--output_dir:", "--seed:", "--category:", "--validation_images:"],
    "grdnet-roi": ["--data_dir:", "--output_dir:", "--template:", "--threshold:",
                   "--[no]overwrite:"],
}


def test_every_binary_lists_its_own_flags(tmp_path):
    results = outputs({name: start([name, "--help"], tmp_path) for name in SCRIPTS})
    for name, (code, out, err) in results.items():
        assert code == 1 and not err, (name, err)  # absl's --help status
        assert out.startswith(f"{name}: ") and f"  {name} --" in out, (name, out[:300])
        for fragment in HELP[name] + ["exit with status 2", "--verbosity=0 shows"]:
            assert fragment in out, (name, fragment, out)


def test_bad_input_is_one_error_line_with_status_2(tmp_path):
    missing = tmp_path / "missing"
    cases = {
        "missing_config": (["grdnet-train", "--config=missing.py", "--model_dir=r",
                            f"--data_dir={tmp_path}"],
                           "config file not found: missing.py (a file with get_config(), or "
                           "one of the named configs: cpu_small, demo, paper, tiny)"),
        "unknown_key": (["grdnet-train", "--config=tiny", "--config.train.epoch=3",
                         "--model_dir=r", f"--data_dir={tmp_path}"],
                        "config override train.epoch: no such config key (did you mean "
                        "train.epochs?); every key is documented in grdnet_tf/config.py"),
        "bad_tuple": (["grdnet-train", "--config=tiny", "--config.data.image_size=big",
                       "--model_dir=r", f"--data_dir={tmp_path}"],
                      "config override data.image_size='big': expected a tuple like "
                      "(32, 32)"),
        "unknown_flag": (["grdnet-eval", "--modeldir=x"],
                         "Unknown command line flag 'modeldir'. Did you mean: model_dir ? "
                         "(see --help)"),
        "no_run": (["grdnet-eval", f"--model_dir={missing}", f"--data_dir={tmp_path}",
                    f"--output_dir={tmp_path / 'out'}"], str(missing)),
        "export_flag": (["grdnet-export", f"--model_dir={missing}"],
                        "--export_dir is required"),
        "positional": (["grdnet-demo-data", "extra"], "unexpected arguments: extra"),
        "calibrate_weights_key": (["grdnet-calibrate", f"--model_dir={missing}",
                                   f"--data_dir={tmp_path}", "--config.model.stages=3"],
                                  "config override model.stages: grdnet-calibrate changes "
                                  "scoring.* keys only"),
        "unknown_layout": (["grdnet-train", "--config=tiny", f"--model_dir={tmp_path / 'r'}",
                            f"--data_dir={tmp_path}"], "unknown data layout (found: "),
    }
    results = outputs({name: start(args, tmp_path) for name, (args, _) in cases.items()})
    for name, (code, out, err) in results.items():
        lines = err.splitlines()
        errors = [line for line in lines if line.startswith("error: ")]
        assert code == 2, (name, err[-2000:])
        # The error once, last; before it at most the progress lines of work started.
        assert len(errors) == 1 and lines[-1] == errors[0], (name, err[-2000:])
        assert "Traceback" not in err and not out, (name, err[-2000:])
        assert cases[name][1] in errors[0], (name, errors[0])
    assert not os.path.exists(tmp_path / "r") and not os.path.exists(tmp_path / "out")


def test_short_training_and_evaluation_console(demo_category, tmp_path):
    """What a user sees: progress with speed and ETA, the ROI counts, the metric that picks
    the best checkpoint, calibration, test-image progress; none of TensorFlow's noise."""
    run = tmp_path / "run"
    train = start(["grdnet-train", "--config=tiny", f"--model_dir={run}",
                   f"--data_dir={demo_category}", "--config.train.epochs=1"], tmp_path)
    (code, out, err), = outputs({"train": train}).values()
    assert code == 0, err[-3000:]
    console = out + err
    for noise in NOISE:
        assert noise not in console, (noise, console)
    lines = err.splitlines()
    assert lines[0] == "strategy _DefaultDistributionStrategy with 1 replica(s)"
    assert any(line.startswith("ROIs from ") and line.endswith(
        ": 11 of 11 training and 1 of 1 validation images have an ROI mask")
        for line in lines), err
    bars = [line for line in lines if line.startswith("epoch 1/1 [")]
    assert [b.split(" | ")[0] for b in bars] == ["epoch 1/1 [##########..........] 1/2",
                                                 "epoch 1/1 [####################] 2/2"]
    assert all(" img/s | " in b and " elapsed | ETA " in b for b in bars)
    assert any("(best checkpoint by val_segmentator_loss: new best)" in line
               for line in lines), err
    assert any(line.startswith("calibration: smoothing window 3 (config); threshold ")
               for line in lines), err
    assert out.startswith("trained 1 epochs (2 steps); checkpoints: ")

    evaluate = start(["grdnet-eval", f"--model_dir={run}", f"--data_dir={demo_category}",
                      f"--output_dir={run / 'eval'}"], tmp_path)
    (code, out, err), = outputs({"eval": evaluate}).values()
    assert code == 0, err[-3000:]
    for noise in NOISE:
        assert noise not in out + err, (noise, err)
    progress = [line for line in err.splitlines() if line.startswith("scoring test images [")]
    assert progress[-1].startswith("scoring test images [####################] 12/12 images")
    assert out.startswith("image AUROC ") and os.path.isfile(run / "eval" / "metrics.json")

    calibrate = start(["grdnet-calibrate", f"--model_dir={run}", f"--data_dir={demo_category}",
                       "--config.scoring.threshold_quantile=0.5"], tmp_path)
    (code, out, err), = outputs({"calibrate": calibrate}).values()
    assert code == 0, err[-3000:]
    for noise in NOISE:
        assert noise not in out + err, (noise, err)
    assert any(line.startswith("calibration: smoothing window 3 (config); threshold ")
               for line in err.splitlines()), err
    assert out.startswith(f"calibrated {run} (") and " (was " in out, out
    assert os.path.isfile(run / "calibration.previous.json")


# Modules whose third-party imports may come from the `edge` extra instead of the core
# requirements (they import them lazily, with an install hint).
EDGE_MODULES = ("serving/edge.py",)


def _third_party_imports(edge=False):
    """Top-level modules grdnet_tf imports that are neither its own nor the stdlib: those of
    the EDGE_MODULES with ``edge``, of every other module without."""
    found = set()
    for root, _, files in os.walk(os.path.join(REPO_ROOT, "grdnet_tf")):
        for name in files:
            relative = os.path.relpath(os.path.join(root, name),
                                       os.path.join(REPO_ROOT, "grdnet_tf"))
            if name.endswith(".py") and (relative in EDGE_MODULES) == edge:
                with open(os.path.join(root, name), encoding="utf-8") as f:
                    tree = ast.parse(f.read())
                for node in ast.walk(tree):
                    if isinstance(node, ast.Import):
                        found.update(a.name.split(".")[0] for a in node.names)
                    elif isinstance(node, ast.ImportFrom) and node.level == 0:
                        found.add(node.module.split(".")[0])
    return {m for m in found if m != "grdnet_tf" and m not in sys.stdlib_module_names}


def test_wheel_ships_configs_and_declares_every_import(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("setup.py", "README.md"):
        shutil.copy(os.path.join(REPO_ROOT, name), source)
    for name in ("grdnet_tf", "configs"):
        shutil.copytree(os.path.join(REPO_ROOT, name), source / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", str(source), "-w", str(tmp_path / "dist")],
                   check=True, capture_output=True, timeout=300)
    wheel, = (tmp_path / "dist").iterdir()
    with zipfile.ZipFile(wheel) as z:
        files = set(z.namelist())
        metadata = z.read(next(n for n in files if n.endswith("METADATA"))).decode()
    assert {f"grdnet_tf/configs/{n}.py" for n in ("cpu_small", "demo", "paper", "tiny")} \
        <= files
    assert "Requires-Python: >=3.11,<3.14" in metadata
    def requirements(extra):
        return {line.split(":", 1)[1].split("==")[0].strip().lower().replace("_", "-")
                for line in metadata.splitlines() if line.startswith("Requires-Dist:")
                and (f"extra == \"{extra}\"" in line if extra else "extra ==" not in line)}

    required, edge = requirements(None), requirements("edge")
    distributions = importlib.metadata.packages_distributions()
    for modules, declared in ((_third_party_imports(), required),
                              (_third_party_imports(edge=True), required | edge)):
        for module in modules:
            names = {d.lower().replace("_", "-") for d in distributions.get(module, [])}
            assert names & declared, (module, names, declared)
    assert {"tf2onnx", "onnxruntime", "ai-edge-litert"} <= edge
