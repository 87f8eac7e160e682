"""Outputs never overwrite each other or a user's files (issue 14 item 7): distinct heatmap
names in grdnet-predict, no leftovers of a failed predict, no stale overlays from an
earlier evaluation, and `make demo` twice keeps files it did not write."""
import csv
import os

import cv2
import numpy as np
import pytest

from grdnet_tf.data import demo, io
from grdnet_tf.evaluation import eval_lib


def _image(path, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(path, np.full((40, 48, 3), value, np.uint8))
    return path


def test_heatmap_names_are_distinct(random_run, tmp_path):
    inputs = tmp_path / "inputs"
    paths = [_image(str(inputs / "a" / "x" / "img.png"), 10),
             _image(str(inputs / "b" / "x" / "img.png"), 60),
             _image(str(inputs / "ok.png"), 120), _image(str(inputs / "ok.JPG"), 200)]
    out = tmp_path / "out"
    result = eval_lib.predict(random_run, str(inputs), str(out), threshold=0.5)
    with open(result["predictions_csv"]) as f:
        rows = {r["path"]: r["heatmap"] for r in csv.DictReader(f)}
    assert sorted(rows) == sorted(paths)
    assert sorted(rows.values()) == ["heatmaps/a/x/img.png.png", "heatmaps/b/x/img.png.png",
                                     "heatmaps/ok.JPG.png", "heatmaps/ok.png.png"]
    for heatmap in rows.values():
        assert cv2.imread(str(out / heatmap)).shape == (40, 48, 3)
    assert eval_lib.heatmap_names(["d/OK.png", "d/ok.png"]) == {"d/OK.png": "OK.png.png",
                                                                "d/ok.png": "ok.png~2.png"}


def test_failed_predict_leaves_the_previous_results(random_run, tmp_path):
    inputs = tmp_path / "inputs"
    _image(str(inputs / "good.png"), 90)
    out = tmp_path / "out"
    eval_lib.predict(random_run, str(inputs), str(out), threshold=0.5)
    with open(out / "predictions.csv") as f:
        before = f.read()
    (inputs / "zz_broken.png").write_bytes(b"not a png")
    with pytest.raises(io.ImageReadError, match="zz_broken.png"):
        eval_lib.predict(random_run, str(inputs), str(out), threshold=0.5)
    # no temporaries; heatmaps/ and masks/ of the first run
    assert sorted(os.listdir(out)) == ["heatmaps", "masks", "predictions.csv"]
    assert os.listdir(out / "heatmaps") == os.listdir(out / "masks") == ["good.png.png"]
    with open(out / "predictions.csv") as f:
        assert f.read() == before
    fresh = tmp_path / "fresh"
    with pytest.raises(io.ImageReadError):
        eval_lib.predict(random_run, str(inputs), str(fresh), threshold=0.5)
    assert os.listdir(fresh) == []  # no predictions.csv.tmp, no empty heatmaps/


def test_second_evaluation_replaces_the_overlays(random_run, tiny_run, demo_category,
                                                tmp_path):
    out = str(tmp_path / "eval")
    names = []
    # Two runs that score differently (the session's: random data, and the demo category).
    for model_dir in (random_run, tiny_run):
        if model_dir == tiny_run:  # a panel of an error the first evaluation saw
            _image(os.path.join(out, "panels", "fp_good_stale.png"), 7)
        eval_lib.evaluate(model_dir, demo_category, out, num_overlays=2)
        names.append(sorted(os.listdir(os.path.join(out, "overlays"))))
    assert len(names[1]) == 4 and names[0] != names[1]
    assert [n for n in os.listdir(out) if n.startswith(".")] == []
    # panels/ holds exactly the panels report.md shows, of the second evaluation.
    with open(os.path.join(out, "report.md"), encoding="utf-8") as f:
        report = f.read()
    panels = os.listdir(os.path.join(out, "panels"))
    assert panels and "fp_good_stale.png" not in panels
    assert all(f"(panels/{name})" in report for name in panels)


def _small_demo(output_dir, **kwargs):
    return demo.make_demo_dataset(output_dir, image_size=(64, 64), **{
        "n_train": 2, "n_test_good": 1, "n_test_defect": 2, "n_test_outside": 1, "n_validation": 0,
        **kwargs})


def test_demo_data_twice_keeps_files_it_did_not_write(tmp_path):
    category = _small_demo(str(tmp_path))
    first = os.path.join(category, "train", "good", "000.png")
    stamp = os.stat(first).st_mtime_ns
    assert _small_demo(str(tmp_path)) == category          # same arguments: reused as is
    assert os.stat(first).st_mtime_ns == stamp
    with open(os.path.join(category, demo.MARKER)) as f:
        assert "train/good/000.png" in f.read().splitlines()
    user = os.path.join(category, "test", "good", "my_photo.png")
    _image(user, 33)
    with pytest.raises(FileExistsError, match="1 file.*test/good/my_photo.png"):
        _small_demo(str(tmp_path), seed=1)
    assert os.path.isfile(user) and os.path.isfile(first)
    os.remove(user)
    _small_demo(str(tmp_path), seed=1, n_train=1)          # other arguments: regenerated
    assert not os.path.exists(os.path.join(category, "train", "good", "001.png"))
    assert os.path.isfile(first)
