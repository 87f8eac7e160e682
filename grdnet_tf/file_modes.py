"""Permissions of what the package writes: files and folders follow the process umask.

`tempfile.mkstemp` creates 0600 files and `tempfile.mkdtemp` 0700 folders whatever the
umask, so a PNG written through a temporary file, or an export version renamed from a
temporary folder, would be unreadable to other users (a TF Serving process running as
another user could not load the model). `follow_umask` gives them the mode a plain
``open`` / ``os.makedirs`` would: 0644 / 0755 under umask 022.
"""
import os
import threading

_LOCK = threading.Lock()


def umask():
    """The process umask (read by setting and restoring it, under a lock)."""
    with _LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def follow_umask(path, directory=False):
    """chmod `path` (a file, or with `directory` a folder) to 0666 / 0777 minus the umask."""
    os.chmod(path, (0o777 if directory else 0o666) & ~umask())
