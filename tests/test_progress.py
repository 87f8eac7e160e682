"""Progress displays (grdnet_tf.progress) on a fake clock: the lines a log file gets, the
redrawn terminal line, speed and ETA (no TensorFlow)."""
import io as pyio

from grdnet_tf import progress


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_training_lines_in_a_log_file():
    lines, clock = [], Clock()
    bar = progress.TrainingProgress(epochs=2, steps_per_epoch=4, batch_size=8, start_step=0,
                                    every=2, display=progress.Display(lines.append,
                                                                      interactive=False),
                                    clock=clock)
    logs = {"total_loss": 1.5, "segmentator_loss": 0.25, "l1_loss": 9.0}
    for step in range(1, 9):
        clock.now += 20.0 if step == 5 else 2.0  # step 5 follows the validation of epoch 1
        bar.step((step - 1) // 4, (step - 1) % 4 + 1, step, logs)
    # One line per 2 steps and at each epoch end; 8 images per 2 s = 4 img/s between
    # steps of an epoch; the ETA is at the wall-clock pace since step 1 (validation in).
    assert lines == [
        "epoch 1/2 [##########..........] 2/4 | 4.0 img/s | 0:00:04 elapsed | ETA 0:00:12 | "
        "total=1.5000 seg=0.2500",
        "epoch 1/2 [####################] 4/4 | 4.0 img/s | 0:00:08 elapsed | ETA 0:00:08 | "
        "total=1.5000 seg=0.2500",
        "epoch 2/2 [##########..........] 2/4 | 4.0 img/s | 0:00:30 elapsed | ETA 0:00:11 | "
        "total=1.5000 seg=0.2500",
        "epoch 2/2 [####################] 4/4 | 4.0 img/s | 0:00:34 elapsed | ETA 0:00:00 | "
        "total=1.5000 seg=0.2500"]


def test_terminal_line_is_redrawn_and_ended():
    stream, clock = pyio.StringIO(), Clock()
    display = progress.Display(print, stream=stream, interactive=True)
    bar = progress.TrainingProgress(1, 3, 2, 0, every=100, display=display, clock=clock)
    for step in (1, 2, 3):
        clock.now += 1.0
        bar.step(0, step, step, {"total_loss": 2.0})
    text = stream.getvalue()
    assert text.count("\r") == 3 and text.endswith("\n") and text.count("\n") == 1
    assert "epoch 1/1 [####################] 3/3 | 2.0 img/s" in text.split("\r")[-1]
    assert progress.format_duration(3725) == "1:02:05" and progress.format_duration(None) == "?"


def test_counted_images():
    lines = []
    display = progress.Display(lines.append, interactive=False)
    items = []
    for item in progress.counted(range(20), 20, "scoring", lines.append, display=display):
        items.append(item)
    assert items == list(range(20))
    # A log line per tenth (every 2 images) and at the end.
    assert len(lines) == 10 and lines[-1].startswith(
        "scoring [####################] 20/20 images")
    assert lines[0].startswith("scoring [##..................] 2/20 images")
