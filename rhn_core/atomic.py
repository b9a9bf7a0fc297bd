"""Files written whole: to a temporary name in the target's folder, flushed, then renamed.

A reader (or a run killed half-way) never sees half a file. The file gets the
ordinary permissions of a new file (``0o666`` less the umask, e.g. ``-rw-r--r--``),
as ``open`` would give it: ``tempfile.mkstemp`` would make it private to its owner,
and a shared data folder would then hold files other users cannot read.
"""
import contextlib
import os


@contextlib.contextmanager
def atomic_file(path, mode="wb"):
    """``with atomic_file(path) as f: f.write(...)``: ``path`` appears only once complete."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
