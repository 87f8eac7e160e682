"""The shared style of the thin absl binaries.

Every binary defines its flags with ``flags.DEFINE_*`` (FlagHolders) at module top and a
``main(argv)`` that checks the flags with :func:`check_flags`, imports its library lazily
inside :func:`quiet_import` (a bad flag is reported without TensorFlow's start-up, and its
start-up banners stay hidden) and calls one library function, turning
the library's :data:`USER_ERRORS` into :func:`fail`: one ``error: ...`` line on stderr and
exit status 2. Its console-script entry point is ``run()`` = :func:`run_binary`, which

* lists the binary's own flags and its module docstring under ``--help`` (absl shows the
  flags of ``__main__``, which for an installed console script is a stub without flags);
* expands ``--flagfile`` and takes ``--config.KEY=VALUE`` overrides (binaries with a
  ``--config``, :func:`define_config_flag`), reporting a bad key or file in one line;
* keeps TensorFlow's start-up noise (C++ banners, cuInit errors on CPU machines, its
  Python INFO lines such as "Sharding callback ...") out of the console unless
  ``--verbosity`` is given, and prints grdnet_tf's own log lines without absl's prefix.
"""
import contextlib
import logging as pylogging
import os
import sys
import tempfile
import warnings

from absl import app, flags, logging

FLAGS = flags.FLAGS
EXIT_USER_ERROR = 2
CONFIG_OVERRIDE_PREFIX = "--config."

# What the library raises for bad flags or inputs (a missing folder, an existing export
# version, a bad value): reported with `fail`, not as a traceback.
USER_ERRORS = (FileNotFoundError, FileExistsError, ValueError)

# Log records of these packages are TensorFlow's own chatter (shown with --verbosity).
_NOISY_PACKAGES = ("tensorflow", "keras", "tf_keras", "h5py")


def quiet_tensorflow():
    """Keep TF's C++ start-up chatter out of the user's terminal (before TF is imported).

    Level 3 hides the oneDNN banner and the cuInit error of machines without a GPU; a value
    the user exported is kept, and ``--verbosity`` lowers it (see :func:`run_binary`).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@contextlib.contextmanager
def quiet_import():
    """Around the lazy library import of ``main``: TensorFlow 2.21 prints its oneDNN and
    CUDA-stub banners while it loads, before its log level applies (TF_CPP_MIN_LOG_LEVEL
    does not hide them), so stderr (file descriptor 2) goes to a temporary file meanwhile.
    What was captured is shown if the import fails; with --verbosity nothing is captured."""
    if FLAGS["verbosity"].present or "tensorflow" in sys.modules:
        yield
        return
    sys.stderr.flush()
    with tempfile.TemporaryFile() as captured:
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        ok = False
        try:
            yield
            ok = True
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if not ok:
                captured.seek(0)
                sys.stderr.write(captured.read().decode("utf-8", "replace"))


def fail(message):
    """Clear error for bad flags or inputs: one ``error: ...`` line on stderr, exit 2."""
    sys.stderr.flush()
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)


def check_flags(argv, *required):
    """Fails on positional arguments and on required flags left unset or empty.

    Args:
      argv: what absl passes to ``main`` (the program name, then leftover arguments).
      required: FlagHolders, or ``(FlagHolder, hint)`` pairs whose hint is added to the
        message, e.g. ``(_DATA_DIR, "an MVTec-style category folder")``.
    """
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])}")
    for entry in required:
        flag, hint = entry if isinstance(entry, tuple) else (entry, "")
        if flag.value is None or (isinstance(flag.value, str) and not flag.value):
            fail(f"--{flag.name} is required" + (f" ({hint})" if hint else ""))


def define_config_flag(default=None):
    """``--config``: a named config (cpu_small, demo, paper, tiny) or a config file path;
    keys are overridden with ``--config.KEY=VALUE``. Read it with :func:`load_config`."""
    holder = flags.DEFINE_string(
        "config", default,
        "A named config (cpu_small, demo, paper, tiny; shipped with the package) or the "
        "path of a Python file with get_config(). Override single keys with "
        "--config.KEY=VALUE, e.g. --config.train.epochs=5 --config.data.channels=1 "
        "--config.data.image_size=64,64; every key is documented in grdnet_tf/config.py.")
    # A key flag of the binary that calls this (listed by its --help), not of this module.
    caller = sys._getframe(1).f_globals["__name__"]
    FLAGS.register_key_flag_for_module(sys.argv[0] if caller == "__main__" else caller,
                                       FLAGS[holder.name])
    return holder


_overrides = {}

# The end of every binary's --help.
HELP_FOOTER = """

Bad flags or inputs print one line `error: ...` on stderr and exit with status 2.
TensorFlow's own log lines (C++ banners, its INFO lines) are hidden; --verbosity=0 shows
them (--verbosity=1 adds debug lines). --flagfile=FILE reads flags from a file.
"""


def load_config(config_flag):
    """The config named by ``config_flag`` with the ``--config.KEY=VALUE`` overrides of the
    command line, validated and frozen; fails (exit 2) with one line naming the file or key."""
    from grdnet_tf import config as config_lib
    try:
        return config_lib.load_config_file(config_flag.value, _overrides)
    except USER_ERRORS as e:
        fail(str(e))


def config_overrides():
    """The ``--config.KEY=VALUE`` overrides of the command line, {KEY: VALUE} (binaries
    run with ``takes_config=True``), for binaries that apply them to a run's own config."""
    return dict(_overrides)


def _split_config_overrides(argv):
    """(argv without them, {KEY: VALUE}) of the ``--config.KEY=VALUE`` arguments."""
    from grdnet_tf import config as config_lib
    rest, items = [], []
    for arg in argv:
        if arg.startswith(CONFIG_OVERRIDE_PREFIX):
            item = arg[len(CONFIG_OVERRIDE_PREFIX):]
            if "=" not in item:
                fail(f"{arg}: a config override needs a value, --config.KEY=VALUE")
            items.append(item)
        else:
            rest.append(arg)
    try:
        return rest, config_lib.parse_overrides(items)
    except ValueError as e:
        fail(str(e))


class _ConsoleFormatter(pylogging.Formatter):
    """grdnet_tf's lines as they are; warnings and errors with a ``warning:`` prefix."""

    def format(self, record):
        message = record.getMessage()
        if record.levelno >= pylogging.WARNING:
            return f"{record.levelname.lower()}: {message}"
        return message


def _from_noisy_package(record):
    path = record.pathname.replace("\\", "/")
    return any(f"/{name}/" in path for name in _NOISY_PACKAGES)


def _setup_console():
    """After flag parsing, before TensorFlow is imported: TF quiet unless --verbosity."""
    verbose = FLAGS["verbosity"].present
    handler = logging.get_absl_handler().python_handler
    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0" if FLAGS.verbosity >= 0 else "2"
        return
    quiet_tensorflow()
    logging.set_verbosity(logging.INFO)
    handler.setFormatter(_ConsoleFormatter())
    handler.addFilter(lambda record: record.levelno >= pylogging.ERROR
                      or not _from_noisy_package(record))
    for package in _NOISY_PACKAGES:
        warnings.filterwarnings("ignore", module=package)


def _parser(takes_config):
    def parse(argv):
        argv = FLAGS.read_flags_from_files(argv, force_gnu=False)
        if takes_config:
            argv, overrides = _split_config_overrides(argv)
            _overrides.update(overrides)
        try:
            rest = FLAGS(argv)
        except flags.Error as e:
            fail(f"{e} (see --help)")
        _setup_console()
        return rest
    return parse


def run_binary(main, module_name, takes_config=False):
    """The console-script entry point of the binary in ``module_name`` (its ``run()``)."""
    module = sys.modules[module_name]
    program = sys.argv[0]
    for flag in FLAGS.get_key_flags_for_module(module_name):
        FLAGS.register_key_flag_for_module(program, flag)
    sys.modules["__main__"].__doc__ = (module.__doc__ or "").rstrip("\n") + HELP_FOOTER
    app.run(main, flags_parser=_parser(takes_config))
