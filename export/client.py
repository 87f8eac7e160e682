#!/usr/bin/env python3
"""Scores image files with a GRD-Net model served by TensorFlow Serving (REST API).

    python export/client.py --server http://localhost:8501 --model grdnet \
        --signature serve_bytes [--version N] [--heatmap_dir heatmaps] a.png b.jpg ...

Standard library only. Each file is sent as its own request to the ``serve_bytes``
signature (images of one request must share a size), so files of any size can be mixed.
Prints one tab-separated line per file (path, anomaly score, is_anomalous) and writes the
heatmap overlay returned by the model to ``<heatmap_dir>/<file stem>_heatmap.png``.
Exit status 1 when any file failed (the server's error message is printed).
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


def score_file(path, url, heatmap_dir, timeout):
    """Sends one file; returns (score, is_anomalous, heatmap path or None)."""
    with open(path, "rb") as f:
        response = post_json(url, build_request(f.read()), timeout)
    prediction = response["predictions"][0]
    heatmap_path = None
    if heatmap_dir and "heatmap_png_bytes" in prediction:
        # TF Serving returns string outputs whose name ends in "_bytes" as {"b64": ...}.
        png = base64.b64decode(prediction["heatmap_png_bytes"]["b64"])
        os.makedirs(heatmap_dir, exist_ok=True)
        stem = os.path.splitext(os.path.basename(path))[0]
        heatmap_path = os.path.join(heatmap_dir, f"{stem}_heatmap.png")
        with open(heatmap_path, "wb") as f:
            f.write(png)
    return float(prediction["anomaly_score"]), bool(prediction["is_anomalous"]), heatmap_path


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
    failed = 0
    print("path\tanomaly_score\tis_anomalous\theatmap")
    for path in args.files:
        try:
            score, anomalous, heatmap = score_file(path, url, args.heatmap_dir, args.timeout)
        except (OSError, RuntimeError, KeyError, ValueError) as e:
            failed += 1
            print(f"{path}\terror: {e}", file=sys.stderr)
            continue
        print(f"{path}\t{score:.6f}\t{anomalous}\t{heatmap or ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
