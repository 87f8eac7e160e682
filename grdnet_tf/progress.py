"""Progress displays of training steps and scored images (no TensorFlow).

On a terminal (stderr is a TTY) a display is one line redrawn in place with ``\\r``:

    epoch 3/30 [#########...........] 12/26 | 11.4 img/s | 0:01:02 elapsed | ETA 0:09:58 | ...

When stderr is not a terminal (a log file, CI, a pipe) it writes one plain line through
``log_fn`` every ``every`` units and at the end, so a log stays readable. Training speed
(images/s) is measured between consecutive steps of an epoch; the ETA is for the whole run
(all epochs) at the wall-clock pace since the first step of this process, validation and
checkpoints included (the first step, which traces the graph, is not counted).
"""
import sys
import time

BAR_WIDTH = 20


def format_duration(seconds) -> str:
    """H:MM:SS, e.g. 3725 -> '1:02:05'; '?' for an unknown duration."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _bar(done, total):
    filled = BAR_WIDTH if total <= 0 else min(BAR_WIDTH, int(BAR_WIDTH * done / total))
    return "[" + "#" * filled + "." * (BAR_WIDTH - filled) + "]"


class Display:
    """Where progress goes: a redrawn terminal line, or one ``log_fn`` line per update.

    Args:
      log_fn: writes one finished line (non-terminal mode, and ``message``).
      stream: the terminal stream (default sys.stderr).
      interactive: force terminal (True) or line (False) mode; None asks ``stream.isatty()``.
    """

    def __init__(self, log_fn, stream=None, interactive=None):
        self.log_fn = log_fn
        self.stream = stream or sys.stderr
        if interactive is None:
            isatty = getattr(self.stream, "isatty", None)
            interactive = bool(isatty and isatty())
        self.interactive = interactive
        self._open = False

    def show(self, line, final=False):
        """Terminal: redraw the line (and end it when `final`). Otherwise: log it."""
        if self.interactive:
            self.stream.write("\r" + line + "\x1b[K" + ("\n" if final else ""))
            self.stream.flush()
            self._open = not final
        else:
            self.log_fn(line)

    def end_line(self):
        """Ends a redrawn line so that the next log line starts on its own line."""
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False


class TrainingProgress:
    """Per-step progress of a training run: the epoch's bar, images/s, elapsed time and
    the ETA of the run, and the latest losses.

    Args:
      epochs, steps_per_epoch: the run's length; batch_size: images per step.
      start_step: global step the run (re)starts at.
      every: steps between lines when not on a terminal (train.log_every_steps).
      display: a :class:`Display`; clock: time source (seconds).
    """

    SHORT = {"total_loss": "total", "generator_loss": "gen", "adversarial_loss": "adv",
             "contextual_loss": "con", "encoder_loss": "enc", "discriminator_loss": "disc",
             "segmentator_loss": "seg"}

    def __init__(self, epochs, steps_per_epoch, batch_size, start_step, every, display,
                 clock=time.monotonic):
        self.epochs, self.steps_per_epoch = int(epochs), int(steps_per_epoch)
        self.batch_size, self.every = int(batch_size), max(1, int(every))
        self.total_steps = self.epochs * self.steps_per_epoch
        self.display, self.clock = display, clock
        self.start = clock()
        self.first = None  # (time, step) of the first step of this process
        self.last = None  # time of the previous step within the same epoch
        self.busy, self.busy_steps = 0.0, 0  # time between consecutive steps of an epoch

    def images_per_second(self):
        """Training speed: step-to-step time within epochs (not validation, resume)."""
        return self.busy_steps * self.batch_size / self.busy if self.busy > 0 else None

    def eta(self, step, now):
        """Seconds left in the run at the wall-clock pace since the first step (which
        includes validation and checkpoints); None before a second step."""
        if self.first is None or step <= self.first[1]:
            return None
        return (self.total_steps - step) * (now - self.first[0]) / (step - self.first[1])

    def line(self, epoch, step_in_epoch, step, logs, now):
        ips = self.images_per_second()
        losses = " ".join(f"{label}={logs[name]:.4f}" for name, label in self.SHORT.items()
                          if name in logs)
        return (f"epoch {epoch + 1}/{self.epochs} {_bar(step_in_epoch, self.steps_per_epoch)} "
                f"{step_in_epoch}/{self.steps_per_epoch} | "
                f"{'?' if ips is None else f'{ips:.1f}'} img/s | "
                f"{format_duration(now - self.start)} elapsed | "
                f"ETA {format_duration(self.eta(step, now))} | {losses}")

    def step(self, epoch, step_in_epoch, step, logs):
        """After global step `step` (1-based), the `step_in_epoch`-th of epoch `epoch`."""
        now = self.clock()
        if self.first is None:
            self.first = (now, step)
        elif self.last is not None and step_in_epoch > 1:
            self.busy += now - self.last
            self.busy_steps += 1
        end = step_in_epoch >= self.steps_per_epoch
        self.last = None if end else now
        if self.display.interactive or end or step % self.every == 0:
            self.display.show(self.line(epoch, step_in_epoch, step, logs, now), final=end)


class CountProgress:
    """Progress over `total` items (images): a bar, the count, items/s and an ETA.

    Without a terminal, one line per tenth of the total (and at the end).
    """

    def __init__(self, total, label, display, unit="images", clock=time.monotonic):
        self.total, self.label, self.unit = int(total), label, unit
        self.display, self.clock = display, clock
        self.start = clock()
        self.every = max(1, self.total // 10)
        self.done = 0

    def line(self, now):
        elapsed = now - self.start
        rate = self.done / max(elapsed, 1e-9)
        eta = (self.total - self.done) / rate if self.done else None
        return (f"{self.label} {_bar(self.done, self.total)} {self.done}/{self.total} "
                f"{self.unit} | {rate:.1f}/s | {format_duration(elapsed)} elapsed | "
                f"ETA {format_duration(eta)}")

    def advance(self, count=1):
        self.done += count
        end = self.done >= self.total
        if self.display.interactive or end or self.done % self.every == 0:
            self.display.show(self.line(self.clock()), final=end)


def counted(iterable, total, label, log_fn, display=None):
    """Yields the items of `iterable`, showing a :class:`CountProgress` of `total` as they
    are consumed."""
    display = display or Display(log_fn)
    progress = CountProgress(total, label, display)
    for item in iterable:
        yield item
        progress.advance()
    display.end_line()
