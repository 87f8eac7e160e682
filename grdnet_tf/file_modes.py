"""Permissions of what the package writes: files and folders follow the process umask.

`tempfile.mkstemp` creates 0600 files and `tempfile.mkdtemp` 0700 folders whatever the
umask, so a PNG written through a temporary file, or an export version renamed from a
temporary folder, would be unreadable to other users (a TF Serving process running as
another user could not load the model). `follow_umask` gives them the mode a plain
``open`` / ``os.makedirs`` would: 0644 / 0755 under umask 022. `replace_dir` puts a
finished temporary folder in place of an output folder (so no stale files of an earlier
run stay among the new ones); `atomic_write` does the same for one file.
"""
import os
import shutil
import tempfile
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


def replace_dir(new_dir, final_dir):
    """Puts the finished `new_dir` in place of `final_dir` (whose old content goes)."""
    old_dir = None
    if os.path.exists(final_dir):
        old_dir = tempfile.mkdtemp(prefix=".old-", dir=os.path.dirname(final_dir))
        os.rename(final_dir, os.path.join(old_dir, "content"))
    follow_umask(new_dir, directory=True)  # mkdtemp made it 0700
    os.rename(new_dir, final_dir)
    if old_dir:
        shutil.rmtree(old_dir, ignore_errors=True)


def atomic_write(path, data: bytes) -> None:
    """Writes ``data`` to ``path`` via a temporary file in the same folder and os.replace
    (creating the folder): a reader never sees a half-written file."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        follow_umask(tmp)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
