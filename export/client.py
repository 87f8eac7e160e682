#!/usr/bin/env python3
"""Scores image files with a GRD-Net model served by TensorFlow Serving (REST API).

    python export/client.py --server http://localhost:8501 --model grdnet \
        --signature serve_bytes [--version N] [--heatmap_dir heatmaps] a.png b.jpg ...

Standard library only. Each file is sent as its own request to the ``serve_bytes``
signature (images of one request must share a size), so files of any size can be mixed.
Prints one tab-separated line per file (path, anomaly score, normalised score,
is_anomalous, heatmap) and writes the heatmap overlay returned by the model to
``<heatmap_dir>/<path relative to the files' common folder, without extension>_heatmap.png``
(``cut/000.png`` and ``good/000.png`` -> ``cut/000_heatmap.png``, ``good/000_heatmap.png``).
Two files that would write one heatmap (``a.png`` and ``a.jpg``) are refused before any
request. Exit status 1 when any file failed (the server's error message is printed), 2 on
such a collision.
"""
import argparse
import base64
import json
import os
import sys
import urllib.error
import urllib.request

SIGNATURES = ("serve_bytes",)   # the pixel-array signatures need a numpy client


def predict_url(server, model, version=None):
    url = f"{server.rstrip('/')}/v1/models/{model}"
    if version is not None:
        url += f"/versions/{version}"
    return url + ":predict"


def build_request(image_bytes, signature="serve_bytes"):
    """TF Serving row-format request body for one encoded image."""
    encoded = base64.b64encode(image_bytes).decode("ascii")
    return {"signature_name": signature, "instances": [{"image_bytes": {"b64": encoded}}]}


def post_json(url, payload, timeout):
    data = json.dumps(payload).encode("utf-8")
    request = urllib.request.Request(url, data=data,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as e:
        body = e.read().decode("utf-8", "replace")
        try:
            message = json.loads(body)["error"]
        except (ValueError, KeyError, TypeError):
            message = body or e.reason
        raise RuntimeError(f"HTTP {e.code}: {message}") from None


def heatmap_paths(files, heatmap_dir):
    """{file: heatmap path} keeping each file's path relative to the files' common folder;
    ValueError naming both files when two would write the same heatmap."""
    folders = [os.path.dirname(os.path.abspath(f)) for f in files]
    root = os.path.commonpath(folders) if folders else ""
    paths, owners = {}, {}
    for path in files:
        relative = os.path.relpath(os.path.abspath(path), root)
        target = os.path.join(heatmap_dir, os.path.splitext(relative)[0] + "_heatmap.png")
        if target in owners and owners[target] != path:
            raise ValueError(f"{owners[target]} and {path} would both write {target}")
        owners[target] = path
        paths[path] = target
    return paths


def score_file(path, url, heatmap_path, timeout):
    """Sends one file; returns (score, normalised score or None, is_anomalous, heatmap path
    or None)."""
    with open(path, "rb") as f:
        response = post_json(url, build_request(f.read()), timeout)
    prediction = response["predictions"][0]
    written = None
    if heatmap_path and "heatmap_png_bytes" in prediction:
        # TF Serving returns string outputs whose name ends in "_bytes" as {"b64": ...}.
        png = base64.b64decode(prediction["heatmap_png_bytes"]["b64"])
        os.makedirs(os.path.dirname(heatmap_path) or ".", exist_ok=True)
        with open(heatmap_path, "wb") as f:
            f.write(png)
        written = heatmap_path
    normalized = prediction.get("normalized_score")
    return (float(prediction["anomaly_score"]),
            None if normalized is None else float(normalized),
            bool(prediction["is_anomalous"]), written)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="http://localhost:8501",
                        help="TF Serving REST address (default %(default)s)")
    parser.add_argument("--model", default="grdnet", help="model name (default %(default)s)")
    parser.add_argument("--signature", default="serve_bytes", choices=SIGNATURES)
    parser.add_argument("--version", type=int, default=None,
                        help="model version (default: the latest the server has loaded)")
    parser.add_argument("--heatmap_dir", default="heatmaps",
                        help="where heatmap PNGs go; empty string: do not save")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    parser.add_argument("files", nargs="+", help="PNG, JPEG or BMP files")
    args = parser.parse_args(argv)

    url = predict_url(args.server, args.model, args.version)
    try:
        heatmaps = heatmap_paths(args.files, args.heatmap_dir) if args.heatmap_dir else {}
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    failed = 0
    print("path\tanomaly_score\tnormalized_score\tis_anomalous\theatmap")
    for path in args.files:
        try:
            score, normalized, anomalous, heatmap = score_file(
                path, url, heatmaps.get(path), args.timeout)
        except (OSError, RuntimeError, KeyError, ValueError) as e:
            failed += 1
            print(f"{path}\terror: {e}", file=sys.stderr)
            continue
        normalized = "" if normalized is None else f"{normalized:.6f}"
        print(f"{path}\t{score:.6f}\t{normalized}\t{anomalous}\t{heatmap or ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
