"""Checkpoints: ``.npz`` of the canonical parameters plus the training state.

Parameters keep their canonical names; training-state entries are stored under
``train_state/<key>``. Files are written to a temporary name in the same
folder (``.<name>.<host>.<pid>.tmp``), flushed to disk and renamed, so a
checkpoint on disk is always whole; temporaries left by a killed process are
removed at the next start (``remove_stale_temporaries``). They load with
``allow_pickle=False``: a checkpoint cannot run code, and no message ever
suggests loading one otherwise.
"""

import json
import os
import re
import tempfile
import zipfile

import numpy as np

from .atomic import _HOST, atomic_file
from .errors import RHNError

STATE_PREFIX = "train_state/"
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip archive (an .npz is one); the second: an empty one
# .last.npz.<host>.<pid>.tmp, and the form without host written before it was added
_TEMPORARY = re.compile(r"^\.(?P<name>.+?\.(?:npz|png))\.(?:(?P<host>[A-Za-z0-9-]+)\.)?(?P<pid>\d+)\.tmp$")


def _running(pid):
    if pid == os.getpid():  # this process writes nothing before it starts: a file of an earlier holder of its pid
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_temporaries(folder):
    """Delete temporaries in ``folder`` whose writer (a process on this host) is gone; their names.

    A file written from another host (its name says which) is left alone: its process cannot be checked here.
    """
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in sorted(names):
        m = _TEMPORARY.match(name)
        if m and m["host"] in (None, _HOST) and not _running(int(m["pid"])):
            try:
                os.remove(os.path.join(folder, name))
                removed.append(name)
            except OSError:
                pass  # gone meanwhile, or not ours to remove: harmless
    return removed


def check_writable(folder, key="save_dir"):
    """Create ``folder`` and write a file in it, so a checkpoint cannot fail there hours later."""
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".rhn-write-test-", dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise RHNError(
            f"cannot write checkpoints to {folder} ({e.strerror or e}"
            f"{': ' + e.filename if e.filename and e.filename != folder else ''}): "
            f"set {key}= to a writable folder"
        )


def save_checkpoint(path, params, train_state=None):
    """Atomically write ``params`` (name -> array) and ``train_state`` (key -> value)."""
    arrays = dict(params)
    for key, value in (train_state or {}).items():
        arrays[STATE_PREFIX + key] = np.asarray(json.dumps(value) if isinstance(value, dict) else value)
    with atomic_file(path) as f:
        np.savez(f, **arrays)


def _what_it_is(head):
    """What a file that is not an .npz looks like, from its first bytes."""
    if not head:
        return "it is empty"
    if head.startswith(b"\x93NUMPY"):
        return "it is a single NumPy .npy array"
    if head[:1] == b"\x80":
        return "it looks like a Python pickle, which rhn never loads"
    try:
        head.decode("utf-8")
        return "it is a text file"
    except UnicodeDecodeError:
        return "it is not a zip archive"


def load_checkpoint(path):
    """(params, train_state) of a checkpoint; a clear error if missing or unreadable."""
    if not path or not os.path.isfile(path):
        raise RHNError(
            f"checkpoint {path!r} not found: give the path of a .npz written by a run "
            f"(runs/<dataset>_<seed>/best.npz or last.npz)"
        )
    advice = "give a best.npz or last.npz written by rhn (python -m rhn_core.convert_tf1 converts the original's)"
    with open(path, "rb") as f:
        head = f.read(512)
    if not head.startswith(ZIP_MAGIC):
        raise RHNError(f"{path} is not an .npz checkpoint ({_what_it_is(head)}): {advice}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files}
    except ValueError:  # NumPy's message here suggests allow_pickle, which rhn never uses
        raise RHNError(
            f"{path} is not an rhn checkpoint: it holds pickled Python objects, which rhn never "
            f"writes or loads; {advice}"
        )
    except (OSError, zipfile.BadZipFile, EOFError, KeyError) as e:
        raise RHNError(
            f"cannot read checkpoint {path}: not a complete .npz ({type(e).__name__}: the file is "
            f"truncated or damaged); {advice}"
        )
    params = {n: a for n, a in arrays.items() if not n.startswith(STATE_PREFIX)}
    state = {n[len(STATE_PREFIX) :]: a for n, a in arrays.items() if n.startswith(STATE_PREFIX)}
    return params, state


def read_state_entries(path, keys):
    """The training-state entries ``keys`` of a checkpoint, as Python values, without loading its weights
    (a few small members of the archive); entries it lacks, or a file that is not readable, give none."""
    found = {}
    try:
        with np.load(path, allow_pickle=False) as z:
            for key in keys:
                if STATE_PREFIX + key in z.files:
                    value = z[STATE_PREFIX + key]
                    found[key] = value.item() if value.ndim == 0 else value
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError):
        pass
    return found
