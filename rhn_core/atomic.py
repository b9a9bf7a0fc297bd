"""Files written whole: to a temporary name in the target's folder, flushed, then renamed.

A reader (or a run killed half-way) never sees half a file. The file gets the
ordinary permissions of a new file (``0o666`` less the umask, e.g. ``-rw-r--r--``),
as ``open`` would give it: ``tempfile.mkstemp`` would make it private to its owner,
and a shared data folder would then hold files other users cannot read.
"""

import contextlib
import os
import re
import socket

_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def temporary_path(path, pid=None, host=_HOST):
    """Where ``path`` is written (by process ``pid``, default this one) before it is renamed into place
    (same folder: the rename is atomic). Host and pid in the name let the next start tell a temporary
    left by a killed writer from one still being written (``checkpoint.remove_stale_temporaries``)."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.{host}.{os.getpid() if pid is None else pid}.tmp")


@contextlib.contextmanager
def atomic_file(path, mode="wb"):
    """``with atomic_file(path) as f: f.write(...)``: ``path`` appears only once complete."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = temporary_path(path)
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
