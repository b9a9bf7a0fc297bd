"""Checkpoints: ``.npz`` of the canonical parameters plus the training state.

Parameters keep their canonical names; training-state entries are stored under
``train_state/<key>``. Files are written to a temporary name in the same
folder, flushed to disk and renamed, so a checkpoint on disk is always whole.
They load with ``allow_pickle=False``: a checkpoint cannot run code.
"""
import json
import os
import zipfile

import numpy as np

from .errors import RHNError

STATE_PREFIX = "train_state/"


def save_checkpoint(path, params, train_state=None):
    """Atomically write ``params`` (name -> array) and ``train_state`` (key -> value)."""
    arrays = dict(params)
    for key, value in (train_state or {}).items():
        arrays[STATE_PREFIX + key] = np.asarray(json.dumps(value) if isinstance(value, dict) else value)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path):
    """(params, train_state) of a checkpoint; a clear error if missing or unreadable."""
    if not path or not os.path.isfile(path):
        raise RHNError(f"checkpoint {path!r} not found: give the path of a .npz written by a run "
                       f"(runs/<dataset>_<seed>/best.npz or last.npz)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise RHNError(f"cannot read checkpoint {path}: not a complete .npz written by rhn ({e})")
    params = {n: a for n, a in arrays.items() if not n.startswith(STATE_PREFIX)}
    state = {n[len(STATE_PREFIX):]: a for n, a in arrays.items() if n.startswith(STATE_PREFIX)}
    return params, state
