"""Shared bits of the thin absl binaries."""
import os
import sys

from absl import logging


def quiet_tensorflow():
    """Keep TF's C++ start-up chatter out of the user's terminal (before TF is imported)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def fail(message):
    """Clear error for bad flags or inputs: one line on stderr, exit status 2."""
    logging.error(message)
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)
