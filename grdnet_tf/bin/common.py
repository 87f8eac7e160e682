"""The shared style of the thin absl binaries.

Every binary defines its flags with ``flags.DEFINE_*`` (FlagHolders) at module top, calls
:func:`quiet_tensorflow` before anything imports TensorFlow, and has a ``main(argv)`` that
checks the flags with :func:`check_flags`, imports its library lazily (a bad flag is
reported without TensorFlow's start-up) and calls one library function, turning the
library's :data:`USER_ERRORS` into :func:`fail`: one ``error: ...`` line on stderr and exit
status 2.
"""
import os
import sys

from absl import logging

# What the library raises for bad flags or inputs (a missing folder, an existing export
# version, a bad value): reported with `fail`, not as a traceback.
USER_ERRORS = (FileNotFoundError, FileExistsError, ValueError)


def quiet_tensorflow():
    """Keep TF's C++ start-up chatter out of the user's terminal (before TF is imported)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def fail(message):
    """Clear error for bad flags or inputs: one line on stderr, exit status 2."""
    logging.error(message)
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


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
