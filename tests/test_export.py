"""grdnet-export: a versioned SavedModel whose signatures equal the in-process scoring.

One tiny run and one export (conftest.random_export, shared with other modules). The SavedModel is loaded in a fresh Python
process (what TF Serving does: no grdnet_tf code, no Python objects of the exporter) and
through saved_model_cli; TF Serving itself cannot run on the dev machine.
"""
import base64
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import types

import cv2
import numpy as np
import pytest
import tensorflow as tf

from grdnet_tf import keys, run_dir, scoring
from grdnet_tf.evaluation import plots
from grdnet_tf.serving import export_lib

from helpers_run import REPO_ROOT

THRESHOLD = 0.5
ATOL = 1e-4
OUTPUTS = {keys.ANOMALY_SCORE: ("float32", [-1]),
           keys.ANOMALY_MAP: ("float32", [-1, -1, -1]),
           keys.IS_ANOMALOUS: ("bool", [-1]),
           keys.RECONSTRUCTION: ("uint8", [-1, -1, -1, 3]),
           keys.ANOMALY_MASK: ("uint8", [-1, -1, -1]),
           keys.NORMALIZED_SCORE: ("float32", [-1])}
SIGNATURES = {
    "serving_default": ({"images": ("uint8", [-1, -1, -1, 3])}, OUTPUTS),
    "serve_bytes": ({"image_bytes": ("string", [-1])},
                    {**OUTPUTS, export_lib.HEATMAP_PNG_BYTES: ("string", [-1])}),
    "serve_roi": ({"images": ("uint8", [-1, -1, -1, 3]), "roi": ("uint8", [-1, -1, -1])},
                  OUTPUTS),
}
# (batch, height, width) of the serving_default cases: batch 1 and 3, three sizes.
DEFAULT_CASES = {"b1_32x32": (1, 32, 32), "b3_48x40": (3, 48, 40), "b3_64x64": (3, 64, 64),
                 "b1_48x40": (1, 48, 40)}

# Runs in a fresh interpreter: loads the SavedModel with TensorFlow only, calls every case
# of a JSON plan, saves the outputs to an .npz and prints the signatures as JSON.
FRESH_PROCESS_SCRIPT = r'''
import json, sys
import numpy as np
import tensorflow as tf

version_dir, plan_path, out_path = sys.argv[1:4]
loaded = tf.saved_model.load(version_dir)

def describe(specs):
    return {name: [spec.dtype.name, [-1 if d is None else d for d in spec.shape.as_list()]]
            for name, spec in specs.items()}

report = {"signatures": {}, "modules": sorted(
    name for name in ("generator_encoder", "generator_decoder", "segmentator",
                      "discriminator", "second_encoder") if hasattr(loaded, name))}
for name, fn in loaded.signatures.items():
    report["signatures"][name] = [describe(fn.structured_input_signature[1]),
                                  describe(fn.structured_outputs)]
results = {}
with open(plan_path) as f:
    plan = json.load(f)
for case in plan:
    inputs = {}
    for name, value in case["inputs"].items():
        if isinstance(value, list):       # encoded image files -> string [B]
            inputs[name] = tf.constant([open(p, "rb").read() for p in value])
        else:                             # .npy file
            inputs[name] = tf.constant(np.load(value))
    for key, tensor in loaded.signatures[case["signature"]](**inputs).items():
        results[case["name"] + "/" + key] = tensor.numpy()
np.savez(out_path, **results)
print(json.dumps(report))
'''


def _subprocess_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


def _images(shape, seed):
    """Smooth random uint8 RGB images [B, h, w, 3] (upsampled noise, like real photos)."""
    b, h, w = shape
    rng = np.random.default_rng(seed)
    coarse = rng.random((b, max(h // 8, 2), max(w // 8, 2), 3), dtype=np.float32)
    fine = tf.image.resize(coarse, (h, w), method="bicubic").numpy()
    noise = rng.normal(0.0, 0.05, fine.shape)
    return np.clip(np.rint((fine + noise) * 255.0), 0, 255).astype(np.uint8)


def _reference(loaded, images, roi=None):
    """The in-process scoring module on the exporting model (numpy outputs)."""
    params = scoring.ScoringParams.from_run(loaded.config, loaded.calibration)
    out = scoring.score_images(loaded.model, images, params, loaded.threshold, roi=roi)
    out = {k: v.numpy() for k, v in out.items()}
    rec = np.rint(np.clip(out[keys.RECONSTRUCTION], 0.0, 1.0) * 255.0).astype(np.uint8)
    out[keys.RECONSTRUCTION] = np.repeat(rec, 3, axis=-1) if rec.shape[-1] == 1 else rec
    return out


def _assert_matches(got, want, threshold=THRESHOLD):
    np.testing.assert_allclose(got[keys.ANOMALY_SCORE], want[keys.ANOMALY_SCORE], atol=ATOL)
    np.testing.assert_allclose(got[keys.ANOMALY_MAP], want[keys.ANOMALY_MAP], atol=ATOL)
    recon_diff = np.abs(got[keys.RECONSTRUCTION].astype(int)
                        - want[keys.RECONSTRUCTION].astype(int))
    assert got[keys.RECONSTRUCTION].shape == want[keys.RECONSTRUCTION].shape
    assert recon_diff.max() <= 1          # uint8 rounding of values equal within 1e-4
    np.testing.assert_array_equal(got[keys.IS_ANOMALOUS], got[keys.ANOMALY_SCORE] > threshold)
    clear = np.abs(want[keys.ANOMALY_SCORE] - threshold) > ATOL
    np.testing.assert_array_equal(got[keys.IS_ANOMALOUS][clear],
                                  want[keys.IS_ANOMALOUS][clear])
    np.testing.assert_allclose(got[keys.NORMALIZED_SCORE], want[keys.NORMALIZED_SCORE],
                               atol=ATOL)
    # No pixel threshold in the tiny run's calibration.json: the default 0.5.
    np.testing.assert_array_equal(got[keys.ANOMALY_MASK],
                                  (got[keys.ANOMALY_MAP] > 0.5).astype(np.uint8))


def _encode(image, ext):
    ok, buf = cv2.imencode(ext, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def _digest(folder):
    """Content hash of a folder tree (names and bytes)."""
    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            path = os.path.join(root, name)
            h.update(os.path.relpath(path, folder).encode())
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def _inference_variables(model):
    return (model.generator.encoder.variables + model.generator.decoder.variables
            + model.segmentator.variables)


@pytest.fixture(scope="module")
def exported(random_export, tmp_path_factory):
    """The session's tiny run and its SavedModel (conftest.random_export, calibrated at
    THRESHOLD), plus a work folder (root) of this module."""
    assert random_export.loaded.threshold == THRESHOLD
    return types.SimpleNamespace(root=tmp_path_factory.mktemp("export"),
                                 **vars(random_export))


class _Jobs:
    """Out-of-process checks started together (they overlap with the in-process tests);
    ``result(name)`` waits for one and returns a CompletedProcess."""

    def __init__(self, folder):
        self.folder = folder
        self._procs, self._results = {}, {}

    def start(self, name, args):
        out = open(self.folder / f"{name}.out", "w")
        err = open(self.folder / f"{name}.err", "w")
        proc = subprocess.Popen(args, stdout=out, stderr=err, text=True,
                                env=_subprocess_env(), cwd=REPO_ROOT)
        self._procs[name] = (proc, args, out, err)

    def result(self, name, timeout=600):
        if name not in self._results:
            proc, args, out, err = self._procs[name]
            proc.wait(timeout=timeout)
            out.close()
            err.close()
            self._results[name] = subprocess.CompletedProcess(
                args, proc.returncode, (self.folder / f"{name}.out").read_text(),
                (self.folder / f"{name}.err").read_text())
        return self._results[name]

    def stop(self):
        for proc, _, out, err in self._procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            out.close()
            err.close()


@pytest.fixture(scope="module", autouse=True)
def jobs(exported):
    """Starts every subprocess of this module right after the export.

    fresh: the SavedModel loaded in a fresh interpreter, every signature called on a plan
    of cases; cli_show / cli_run: saved_model_cli; bin_*: the grdnet-export binary (its
    version, overwrite and threshold flags, and the edge formats' --input_size).
    """
    work = exported.root / "jobs"
    work.mkdir()
    jobs = _Jobs(work)
    plan, inputs = [], {}

    def add(name, signature, **arrays):
        case = {"name": name, "signature": signature, "inputs": {}}
        for key, value in arrays.items():
            if isinstance(value, list):
                paths = []
                for i, data in enumerate(value):
                    paths.append(str(work / f"{name}_{key}_{i}"))
                    with open(paths[-1], "wb") as f:
                        f.write(data)
                case["inputs"][key] = paths
            else:
                path = str(work / f"{name}_{key}.npy")
                np.save(path, value)
                case["inputs"][key] = path
        inputs[name] = arrays
        plan.append(case)

    for seed, (name, shape) in enumerate(DEFAULT_CASES.items()):
        add(f"default_{name}", "serving_default", images=_images(shape, seed))
    images = inputs["default_b3_48x40"]["images"]
    roi = np.zeros(images.shape[:3], np.uint8)
    roi[:, 8:40, 4:30] = 255
    add("roi_partial", "serve_roi", images=images, roi=roi)
    add("roi_zero", "serve_roi", images=images, roi=np.zeros_like(roi))
    add("roi_one", "serve_roi", images=images, roi=np.ones_like(roi))
    add("bytes_png", "serve_bytes", image_bytes=[_encode(im, ".png") for im in images])
    add("bytes_jpeg", "serve_bytes",
        image_bytes=[_encode(_images((1, 64, 56), 9)[0], ".jpg")])
    script = work / "load_and_call.py"
    script.write_text(FRESH_PROCESS_SCRIPT)
    (work / "plan.json").write_text(json.dumps(plan))
    jobs.start("fresh", [sys.executable, str(script), exported.version_dir,
                         str(work / "plan.json"), str(work / "outputs.npz")])

    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    jobs.start("cli_show", [cli, "show", "--all", "--dir", exported.version_dir])
    np.save(work / "cli_images.npy", _images((2, 40, 48), 11))
    jobs.start("cli_run", [cli, "run", "--dir", exported.version_dir, "--tag_set", "serve",
                           "--signature_def", "serving_default",
                           "--inputs", f"images={work / 'cli_images.npy'}",
                           "--outdir", str(work / "cli_out")])

    binary = [sys.executable, "-m", "grdnet_tf.bin.export"]
    bases = {name: str(work / name) for name in ("base_exists", "base_overwrite")}
    for base in bases.values():
        shutil.copytree(exported.version_dir, os.path.join(base, "1"))
    jobs.start("bin_missing_flag", binary + [f"--export_dir={work / 'base_missing'}"])
    jobs.start("bin_exists", binary + [f"--model_dir={exported.model_dir}",
                                       f"--export_dir={bases['base_exists']}", "--version=1"])
    jobs.start("bin_overwrite", binary + [
        f"--model_dir={exported.model_dir}", f"--export_dir={bases['base_overwrite']}",
        "--version=1", "--overwrite", "--threshold=0.25"])
    jobs.start("bin_bad_input_size", binary + [
        f"--model_dir={exported.model_dir}", f"--export_dir={work / 'base_bad_input_size'}",
        "--format=litert", "--input_size=32,x"])
    jobs.work, jobs.inputs, jobs.bases = work, inputs, bases
    jobs.digest_before = _digest(exported.version_dir)
    yield jobs
    jobs.stop()


@pytest.fixture(scope="module")
def fresh_process(jobs):
    """Outputs of every signature case, computed in a fresh Python process."""
    proc = jobs.result("fresh")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    # String outputs (heatmap PNGs) are object arrays; the file is our own.
    with np.load(jobs.work / "outputs.npz", allow_pickle=True) as npz:
        arrays = {key: npz[key] for key in npz.files}
    outputs = {}
    for key, value in arrays.items():
        case, name = key.split("/")
        outputs.setdefault(case, {})[name] = value
    return types.SimpleNamespace(report=report, outputs=outputs, inputs=jobs.inputs)


# In-process tests first: they run while the subprocesses of `jobs` work.

def test_only_inference_variables_are_exported(exported):
    index = os.path.join(exported.version_dir, "variables", "variables")
    names = [name for name, _ in tf.train.list_variables(index)
             if name != "_CHECKPOINTABLE_OBJECT_GRAPH"]
    assert not [n for n in names if "discriminator" in n or "second_encoder" in n]
    assert {n.split("/")[0] for n in names} == {"generator_encoder", "generator_decoder",
                                                "segmentator"}
    # Exactly the exporting model's encoder, decoder and segmentator values, nothing else.
    model = exported.loaded.model
    expected = _inference_variables(model)
    assert len(names) == len(expected)

    def fingerprint(arrays):
        return sorted((a.shape, a.dtype.str, hashlib.sha256(a.tobytes()).hexdigest())
                      for a in arrays)
    assert fingerprint(tf.train.load_variable(index, n) for n in names) == \
        fingerprint(v.numpy() for v in expected)
    exported_params = sum(int(np.prod(tf.train.load_variable(index, n).shape))
                          for n in names)
    excluded = model.discriminator.count_params() + \
        model.generator.second_encoder.count_params()
    assert excluded > 0
    assert exported_params + excluded == (model.generator.count_params()
                                          + model.discriminator.count_params()
                                          + model.segmentator.count_params())

    metadata = export_lib.read_metadata(exported.version_dir)
    config = exported.loaded.config
    assert metadata["version"] == 1
    assert metadata["threshold"] == THRESHOLD and metadata["threshold_source"] == "calibration"
    assert metadata["image_size"] == list(config.data.image_size)
    assert metadata["channels"] == config.data.channels
    assert metadata["smoothing_kernel"] == config.scoring.smoothing_kernel
    assert metadata["source_checkpoint"] == os.path.abspath(exported.loaded.checkpoint_path)
    assert metadata["config"]["model"]["base_width"] == config.model.base_width


def test_export_holds_the_trained_weights(exported):
    """An independent restore of the run gives exactly the exported (trained) weights."""
    again = run_dir.load_for_inference(exported.model_dir)
    differing = [a.path for a, b in zip(_inference_variables(exported.loaded.model),
                                        _inference_variables(again.model))
                 if not np.array_equal(a.numpy(), b.numpy())]
    assert not differing


@pytest.fixture(scope="module")
def saved_model(exported):
    """The export loaded in this process (for error cases and the REST stand-in)."""
    return tf.saved_model.load(exported.version_dir)


def test_serve_bytes_bad_input_raises_invalid_argument(exported, saved_model):
    loaded = saved_model
    serve = loaded.signatures["serve_bytes"]
    images = _images((2, 32, 32), 5)
    png = _encode(images[0], ".png")
    bad = {
        "not a PNG, JPEG or BMP": [b"\x00garbage bytes"],
        "PNG": [png[:60]],                                     # truncated, valid header
        "same size": [png, _encode(_images((1, 40, 32), 6)[0], ".png")],
        "at least one": [],
    }
    for message, batch in bad.items():
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            serve(image_bytes=tf.constant(batch, dtype=tf.string))
    with pytest.raises(tf.errors.InvalidArgumentError, match="roi must be"):
        loaded.signatures["serve_roi"](images=tf.constant(images),
                                       roi=tf.ones((2, 16, 32), tf.uint8))
    # The process is still fine: a BMP batch of two works afterwards.
    out = serve(image_bytes=tf.constant([_encode(im, ".bmp") for im in images]))
    assert out[keys.ANOMALY_MAP].shape == (2, 32, 32)
    _assert_matches({k: v.numpy() for k, v in out.items()},
                    _reference(exported.loaded, images))


class _FakeServingHandler(http.server.BaseHTTPRequestHandler):
    """Answers :predict like TF Serving's REST API (row format) with the SavedModel."""

    saved_model = None

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/models/grdnet:predict" or \
                body.get("signature_name") != "serve_bytes":
            return self._reply(404, {"error": f"unknown model or signature: {self.path}"})
        data = [base64.b64decode(i["image_bytes"]["b64"]) for i in body["instances"]]
        try:
            out = self.saved_model.signatures["serve_bytes"](image_bytes=tf.constant(data))
        except tf.errors.InvalidArgumentError as e:
            return self._reply(400, {"error": e.message})

        def value(name, v):   # TF Serving: string outputs named *_bytes are base64 objects
            if name.endswith("_bytes"):
                return {"b64": base64.b64encode(v).decode("ascii")}
            return v.tolist()
        predictions = [{name: value(name, t.numpy()[i]) for name, t in out.items()}
                       for i in range(len(data))]
        self._reply(200, {"predictions": predictions})

    def _reply(self, code, payload):
        data = json.dumps(payload).encode("utf-8")
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_client_and_request_example(exported, saved_model, tmp_path):
    with open(os.path.join(REPO_ROOT, "export", "request_example.json")) as f:
        request = json.load(f)
    assert request["signature_name"] == "serve_bytes"
    data = [base64.b64decode(i["image_bytes"]["b64"]) for i in request["instances"]]
    out = saved_model.signatures["serve_bytes"](image_bytes=tf.constant(data))
    assert out[keys.ANOMALY_MAP].shape == (1, 32, 32)

    # Same stem in two folders (issue #13 item 5): each keeps its own heatmap.
    images = {"cut/000.png": _images((1, 48, 40), 21)[0],
              "good/000.jpg": _images((1, 32, 64), 22)[0]}
    paths = []
    for name, image in images.items():
        paths.append(str(tmp_path / name))
        os.makedirs(os.path.dirname(paths[-1]), exist_ok=True)
        with open(paths[-1], "wb") as f:
            f.write(_encode(image, os.path.splitext(name)[1]))
    paths.append(str(tmp_path / "broken.png"))
    with open(paths[-1], "wb") as f:
        f.write(b"not an image")

    handler = type("Handler", (_FakeServingHandler,), {"saved_model": saved_model})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        heatmaps = tmp_path / "heatmaps"
        proc = subprocess.run(
            [sys.executable, os.path.join(REPO_ROOT, "export", "client.py"),
             "--server", f"http://127.0.0.1:{server.server_address[1]}", "--model", "grdnet",
             "--signature", "serve_bytes", "--heatmap_dir", str(heatmaps)] + paths,
            capture_output=True, text=True, timeout=120)
    finally:
        server.shutdown()
        server.server_close()
    assert proc.returncode == 1                               # broken.png failed
    assert "broken.png" in proc.stderr and "not a PNG, JPEG or BMP" in proc.stderr
    rows = [line.split("\t") for line in proc.stdout.strip().splitlines()[1:]]
    assert [row[0] for row in rows] == paths[:2]
    for (path, score, normalized, anomalous, heatmap), name in zip(rows, images):
        with open(path, "rb") as f:
            want = saved_model.signatures["serve_bytes"](image_bytes=tf.constant([f.read()]))
        assert abs(float(score) - float(want[keys.ANOMALY_SCORE][0])) < 1e-5
        assert abs(float(normalized) - float(want[keys.NORMALIZED_SCORE][0])) < 1e-5
        assert anomalous == str(bool(want[keys.IS_ANOMALOUS][0]))
        assert heatmap == str(heatmaps / f"{os.path.splitext(name)[0]}_heatmap.png")
        png = cv2.imdecode(np.fromfile(heatmap, np.uint8), cv2.IMREAD_COLOR)
        assert png.shape == images[name].shape

    # Two files that would write one heatmap are refused before any request.
    twin = str(tmp_path / "cut" / "000.bmp")
    shutil.copy(paths[0], twin)
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "export", "client.py"), "--server",
         "http://127.0.0.1:9", "--heatmap_dir", str(heatmaps), paths[0], twin],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert f"error: {paths[0]} and {twin} would both write" in proc.stderr


def test_next_version_and_second_export(exported, tmp_path):
    base = str(tmp_path / "exported")
    assert export_lib.next_version(base) == 1
    shutil.copytree(exported.version_dir, os.path.join(base, "1"))
    os.makedirs(os.path.join(base, "not_a_version"))
    os.makedirs(os.path.join(base, ".tmp-7-abc"))          # another writer's temporary
    assert export_lib.next_version(base) == 2
    second = export_lib.export_run(exported.model_dir, base)
    assert second == os.path.join(base, "2")
    assert export_lib.read_metadata(second)["version"] == 2
    assert os.path.isfile(os.path.join(second, "saved_model.pb"))
    assert sorted(os.listdir(base)) == [".tmp-7-abc", "1", "2", "not_a_version"]
    assert export_lib.next_version(base) == 3


def test_failed_export_leaves_nothing(exported, tmp_path, monkeypatch):
    base = str(tmp_path / "exported")
    shutil.copytree(exported.version_dir, os.path.join(base, "1"))
    before = _digest(os.path.join(base, "1"))

    def broken_save(obj, export_dir, **kwargs):
        with open(os.path.join(export_dir, "saved_model.pb"), "wb") as f:
            f.write(b"half written")
        raise OSError("disk full")

    monkeypatch.setattr(export_lib.tf.saved_model, "save", broken_save)
    # The restore is not under test here: reuse the fixture's model.
    monkeypatch.setattr(export_lib.run_dir, "load_for_inference",
                        lambda model_dir, checkpoint, calibration=None: exported.loaded)
    with pytest.raises(OSError, match="disk full"):
        export_lib.export_run(exported.model_dir, base)
    with pytest.raises(OSError, match="disk full"):
        export_lib.export_run(exported.model_dir, base, version=1, overwrite=True)
    assert sorted(os.listdir(base)) == ["1"]                 # no 2/, no .tmp-*, no .old-*
    assert _digest(os.path.join(base, "1")) == before


def test_bad_arguments_write_nothing(exported, tmp_path):
    base = str(tmp_path / "exported")
    with pytest.raises(FileNotFoundError, match="--model_dir"):
        export_lib.export_run(str(tmp_path / "no_run"), base)

    no_checkpoint = str(tmp_path / "no_checkpoint")
    os.makedirs(no_checkpoint)
    shutil.copy(os.path.join(exported.model_dir, "config.json"), no_checkpoint)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        export_lib.export_run(no_checkpoint, base)

    uncalibrated = str(tmp_path / "uncalibrated")
    shutil.copytree(exported.model_dir, uncalibrated)
    os.remove(os.path.join(uncalibrated, run_dir.CALIBRATION_JSON))
    with pytest.raises(ValueError, match="--threshold"):
        export_lib.export_run(uncalibrated, base)
    with pytest.raises(ValueError, match="--threshold"):
        export_lib.export_run(exported.model_dir, base, threshold=float("nan"))
    with pytest.raises(ValueError, match="--version"):
        export_lib.export_run(exported.model_dir, base, version=0)
    assert not os.path.exists(base)

    with pytest.raises(FileExistsError, match="--overwrite"):
        export_lib.export_run(exported.model_dir, exported.base, version=1)
    assert sorted(os.listdir(exported.base)) == ["1"]


# Out-of-process tests: the fresh interpreter, saved_model_cli and the binary.

def test_signatures_in_fresh_process(fresh_process):
    signatures = fresh_process.report["signatures"]
    assert set(signatures) == set(SIGNATURES)
    for name, (inputs, outputs) in SIGNATURES.items():
        got_inputs, got_outputs = signatures[name]
        assert {k: tuple(v) for k, v in got_inputs.items()} == inputs, name
        assert {k: tuple(v) for k, v in got_outputs.items()} == outputs, name
    # Only the inference sub-networks are in the object graph.
    assert fresh_process.report["modules"] == ["generator_decoder", "generator_encoder",
                                               "segmentator"]


@pytest.mark.parametrize("case", sorted(DEFAULT_CASES))
def test_serving_default_equals_in_process_scoring(exported, fresh_process, case):
    images = fresh_process.inputs[f"default_{case}"]["images"]
    got = fresh_process.outputs[f"default_{case}"]
    b, h, w = DEFAULT_CASES[case]
    assert got[keys.ANOMALY_SCORE].shape == (b,)
    assert got[keys.ANOMALY_MAP].shape == (b, h, w)
    assert got[keys.IS_ANOMALOUS].dtype == np.bool_
    assert got[keys.RECONSTRUCTION].shape == (b, h, w, 3)
    assert got[keys.RECONSTRUCTION].dtype == np.uint8
    assert 0.0 <= got[keys.ANOMALY_MAP].min() and got[keys.ANOMALY_MAP].max() <= 1.0
    _assert_matches(got, _reference(exported.loaded, images))


def test_serve_roi(exported, fresh_process):
    images = fresh_process.inputs["roi_partial"]["images"]
    roi = fresh_process.inputs["roi_partial"]["roi"]
    outputs = fresh_process.outputs
    _assert_matches(outputs["roi_partial"], _reference(exported.loaded, images, roi=roi))
    zero = outputs["roi_zero"]
    np.testing.assert_array_equal(zero[keys.ANOMALY_SCORE], 0.0)
    np.testing.assert_array_equal(zero[keys.ANOMALY_MAP], 0.0)
    assert not zero[keys.IS_ANOMALOUS].any()
    default = outputs["default_b3_48x40"]
    for key in OUTPUTS:
        np.testing.assert_allclose(outputs["roi_one"][key], default[key], atol=1e-6,
                                   err_msg=key)


def test_serve_bytes_png_and_jpeg(exported, fresh_process):
    images = fresh_process.inputs["default_b3_48x40"]["images"]     # the PNG batch
    got = fresh_process.outputs["bytes_png"]
    _assert_matches(got, _reference(exported.loaded, images))
    np.testing.assert_allclose(got[keys.ANOMALY_SCORE],
                               fresh_process.outputs["default_b3_48x40"][keys.ANOMALY_SCORE],
                               atol=1e-6)
    for image, anomaly_map, png in zip(images, got[keys.ANOMALY_MAP],
                                       got[export_lib.HEATMAP_PNG_BYTES]):
        heatmap = cv2.cvtColor(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR),
                               cv2.COLOR_BGR2RGB)
        assert heatmap.shape == image.shape
        np.testing.assert_array_equal(heatmap, plots.overlay(image, anomaly_map, alpha=0.5))

    jpeg = fresh_process.inputs["bytes_jpeg"]["image_bytes"][0]
    got = fresh_process.outputs["bytes_jpeg"]
    # Decoded as grdnet-predict and the training cache decode it (OpenCV), not with TF's
    # default fast IDCT.
    decoded = cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR),
                           cv2.COLOR_BGR2RGB)[None]
    assert got[keys.ANOMALY_MAP].shape == (1, 64, 56)
    _assert_matches(got, _reference(exported.loaded, decoded))
    heatmap = cv2.imdecode(np.frombuffer(got[export_lib.HEATMAP_PNG_BYTES][0], np.uint8),
                           cv2.IMREAD_COLOR)
    assert heatmap.shape == (64, 56, 3)


def test_saved_model_cli_show_and_run(exported, jobs):
    show = jobs.result("cli_show")
    assert show.returncode == 0, show.stderr[-2000:]
    for name in SIGNATURES:
        assert f"signature_def['{name}']" in show.stdout
    for name in ("images", "image_bytes", "roi", export_lib.HEATMAP_PNG_BYTES):
        assert f"['{name}'] tensor_info" in show.stdout

    # `run` loads through the TF1 session path, like TF Serving's C++ loader.
    run = jobs.result("cli_run")
    assert run.returncode == 0, run.stderr[-2000:]
    got = {key: np.load(jobs.work / "cli_out" / f"{key}.npy") for key in OUTPUTS}
    _assert_matches(got, _reference(exported.loaded, np.load(jobs.work / "cli_images.npy")))


def test_binary_flags_versions_and_overwrite(exported, jobs):
    missing = jobs.result("bin_missing_flag")
    assert missing.returncode != 0 and "--model_dir" in missing.stderr
    assert not os.path.exists(jobs.work / "base_missing")

    exists = jobs.result("bin_exists")
    assert exists.returncode != 0
    assert "--version=1" in exists.stderr and "--overwrite" in exists.stderr
    base = jobs.bases["base_exists"]
    assert sorted(os.listdir(base)) == ["1"]
    assert _digest(os.path.join(base, "1")) == jobs.digest_before      # untouched

    replaced = jobs.result("bin_overwrite")
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    base = jobs.bases["base_overwrite"]
    assert replaced.stdout.strip().splitlines()[-1] == os.path.join(base, "1")
    assert sorted(os.listdir(base)) == ["1"]                  # no .tmp-*, no .old-*
    metadata = export_lib.read_metadata(os.path.join(base, "1"))
    assert metadata["threshold"] == 0.25 and metadata["threshold_source"] == "flag"


def test_binary_rejects_a_bad_input_size(jobs):
    """The edge formats' flag (test_edge.py) through the binary: exit 2, one error naming
    it, no export folder."""
    proc = jobs.result("bin_bad_input_size")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error: --input_size=32,x must be two positive integers" in proc.stderr
    assert not os.path.exists(jobs.work / "base_bad_input_size")


def test_training_cache_and_serving_default_give_the_model_the_same_input(
        exported, saved_model, tmp_path):
    """One file, two paths: the training cache (OpenCV decode, preprocess, uint8) and the
    SavedModel (uint8 RGB in, preprocess in the graph). The model input is the same bit for
    bit, so the exported score equals the score of the cached image."""
    from grdnet_tf.data import pipeline, preprocess
    loaded = exported.loaded
    config = loaded.config
    size = tuple(config.data.image_size)
    native = _images((1, 75, 61), 11)[0]          # not a multiple of the 32x32 model size
    path = str(tmp_path / "part.png")
    cv2.imwrite(path, cv2.cvtColor(native, cv2.COLOR_RGB2BGR))
    cache = pipeline.load_cache([types.SimpleNamespace(path=path, roi_path=None)], size,
                                config.data.channels)
    graph_input = tf.function(
        lambda x: preprocess.model_input(x, size, config.data.channels),
        input_signature=[export_lib.IMAGES_SPEC])(tf.constant(native[None])).numpy()
    np.testing.assert_array_equal(preprocess.to_unit(cache.images[0]), graph_input[0])
    params = scoring.ScoringParams.from_run(config, loaded.calibration)
    from_cache = scoring.score_model_inputs(
        loaded.model, preprocess.to_unit(cache.images), params)
    served = saved_model.signatures["serving_default"](images=tf.constant(native[None]))
    np.testing.assert_allclose(served[keys.ANOMALY_SCORE].numpy(),
                               from_cache[keys.ANOMALY_SCORE].numpy(), atol=1e-6)
    # What serving did before: an antialiased bilinear resize, 1/255 and more away.
    old = tf.image.resize(native[None] / 255.0, size, method="bilinear", antialias=True)
    assert np.abs(old.numpy()[0] - cache.images[0] / 255.0).max() > 1.0 / 255.0


def test_serve_bytes_decodes_jpeg_as_opencv_does(saved_model):
    """serve_bytes decodes JPEG with the accurate integer IDCT (OpenCV's): the same file
    scores the same through serve_bytes and through serving_default on cv2-decoded pixels.
    TF's default fast IDCT differs by several grey levels."""
    image = _images((1, 64, 56), 12)[0]
    jpeg = _encode(image, ".jpg")
    by_cv2 = cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR),
                          cv2.COLOR_BGR2RGB)
    fast = tf.io.decode_jpeg(jpeg, channels=3).numpy()
    assert np.abs(fast.astype(int) - by_cv2).max() >= 1
    served = saved_model.signatures["serve_bytes"](image_bytes=tf.constant([jpeg]))
    default = saved_model.signatures["serving_default"](images=tf.constant(by_cv2[None]))
    np.testing.assert_array_equal(served[keys.ANOMALY_SCORE].numpy(),
                                  default[keys.ANOMALY_SCORE].numpy())
