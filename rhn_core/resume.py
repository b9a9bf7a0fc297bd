"""Continuing a run from its checkpoint (``resume=``): what a last.npz must hold, and the checks that a
resumed run continues the same run, on the same data, into a folder it may write.

A training run writes ``last.npz`` (weights and training state, docs/training.md) and ``best.npz``
(the best epoch's weights). ``resume=`` reads the state back (``restore``) so that the run goes on
exactly where it stopped; what changed in the config since is said and recorded, other data is
refused (unless ``resume_other_data=True``), another run's checkpoints are never replaced
(``refuse_foreign``), and the best epoch's weights that the final evaluation needs must be there
(``check_best``). A run stored in a database is fetched by the experiment's tracking before this
module sees its file.
"""

import json
import math
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .checkpoint import load_checkpoint, read_state_entries
from .errors import RHNError
from .hyperparams import config_changes
from .params import check_params
from .runlock import checkpoints_in, shell_arg

# Training-state entries a resumed run reads (with the logs); "hidden" is there only inside an epoch.
RESUME_STATE = ("epoch", "step", "costs", "iters", "rng", "best_valid", "best_epoch", "batch_size", "num_steps")


def resume_file(value):
    """``resume=``: a checkpoint, or a run's folder (its last.npz)."""
    if value and os.path.isdir(value):
        last = os.path.join(value, "last.npz")
        if not os.path.isfile(last):
            raise RHNError(
                f"resume={value} is a folder without a last.npz: give the last.npz a run wrote "
                f"(it is in the folder its start line names)"
            )
        return last
    return value


def progress_of(state):
    """How far a last.npz got, from its epoch and step entries."""
    epoch, step = int(state["epoch"]), int(state["step"])
    return f"in epoch {epoch} at step {step}" if step else f"{epoch - 1} epoch{'s' if epoch != 2 else ''} done"


def lineage_of(path):
    """The id of the run that wrote checkpoint ``path`` ('' when it records none)."""
    return read_state_entries(path, ["run_lineage"]).get("run_lineage", "")


def refuse_foreign(run_dir, own_dir, lineage):
    """A run never replaces another run's checkpoints: a new run (``lineage`` None) needs a folder without
    any; a resumed run may write only over its own (its resume file's folder ``own_dir``, or files of its
    lineage)."""
    if own_dir and os.path.realpath(own_dir) == os.path.realpath(run_dir):
        return
    found = checkpoints_in(run_dir)
    if lineage is not None:
        found = [
            n
            for n in found
            if read_state_entries(os.path.join(run_dir, n), ["run_lineage"]).get("run_lineage") != lineage
        ]
    if not found:
        return
    last = os.path.join(run_dir, "last.npz")
    held = read_state_entries(last, ["epoch", "step"]) if "last.npz" in found else {}
    what = ", ".join(f"{name} ({progress_of(held)})" if name == "last.npz" and held else name for name in found)
    advice = (
        f"continue that run with {shell_arg('resume', last)}, or " if "last.npz" in found and lineage is None else ""
    )
    raise RHNError(
        f"{run_dir} holds another run's checkpoints ({what}), which this run would replace: "
        f"{advice}set save_dir= to a new folder, or leave save_dir out (each run then gets a "
        f"fresh folder under runs/)"
    )


@dataclass
class Resumed:
    """The training state of a last.npz, as the run continues it."""

    params: dict
    epoch: int
    step: int
    costs: float
    iters: int
    rng: np.random.Generator  # the mask stream, where it stopped
    best_valid: float
    best_epoch: int
    logs: dict
    hidden: Optional[list]  # this process's rows of the carried state (inside an epoch), else None
    lineage: Optional[str]  # None: written before checkpoints recorded their run


def restore(path, spec, cfg, data_fingerprint, log_keys, rows, run):
    """The training state of checkpoint ``path`` for a run of ``spec`` and ``cfg`` on the data of
    ``data_fingerprint``; ``rows``: this process's rows of the batch. A file that cannot be continued
    fails here in one line, before anything is written; config changes since the checkpoint are printed
    and recorded in ``run.info``."""
    params, st = load_checkpoint(path)
    if "step" not in st:
        raise RHNError(f"{path} has no training state (a best.npz?): resume from the run's last.npz")
    missing = [k for k in (*RESUME_STATE, *log_keys) if k not in st]
    if missing:
        raise RHNError(
            f"{path} is not a complete training checkpoint: its training state lacks "
            f"{', '.join(missing)}; resume from a last.npz written by a run"
        )
    check_params(params, spec, path)
    check_data(path, st, cfg, data_fingerprint)
    try:
        epoch, step = int(st["epoch"]), int(st["step"])
        shape = {k: int(st[k]) for k in ("batch_size", "num_steps")}
        if step and shape != {k: cfg[k] for k in shape}:
            raise RHNError(
                f"{path} stopped inside an epoch with batch_size={shape['batch_size']}, "
                f"num_steps={shape['num_steps']}: resume with those values"
            )
        rng = np.random.default_rng()  # PCG64, the training run's generator; the state sets where it was
        rng.bit_generator.state = json.loads(str(st["rng"]))
        resumed = Resumed(
            params=params,
            epoch=epoch,
            step=step,
            costs=float(st["costs"]),
            iters=int(st["iters"]),
            rng=rng,
            best_valid=float(st["best_valid"]),
            best_epoch=int(st["best_epoch"]),
            logs={k: [float(v) for v in st[k]] for k in log_keys},
            hidden=[h[rows] for h in st["hidden"]] if "hidden" in st else None,
            lineage=str(st["run_lineage"]) if "run_lineage" in st else None,
        )
        stored = json.loads(str(st["config"])) if "config" in st else None
    except (ValueError, TypeError, KeyError, IndexError) as e:
        raise RHNError(
            f"{path} is not a usable training checkpoint: its training state is damaged "
            f"({type(e).__name__}); resume from a last.npz written by a run"
        )
    print(f"Resuming from {path}: epoch {epoch}, step {step}")
    note_changes(path, stored, cfg, run)
    return resumed


def note_changes(path, stored, cfg, run):
    """A resumed run whose config differs from its checkpoint's says so, one line a key, and records it."""
    if stored is None:
        print(
            f"Note: {path} does not record its config (written before configs were stored); changes "
            f"of learning_rate, dropout... since then are not checked"
        )
        return
    changes = config_changes(stored, cfg)
    given = getattr(getattr(run, "config_modifications", None), "modified", None)
    if given is not None and "seed" not in given:  # Sacred drew a new one; the masks go on from the checkpoint
        changes.pop("seed", None)
    for key, (old, new) in changes.items():
        print(f"Changed since the checkpoint: {key} {old!r} -> {new!r}")
    if changes:
        run.info["resumed_with_changes"] = {k: list(v) for k, v in changes.items()}


def check_data(path, st, cfg, data_fingerprint):
    """A checkpoint continues only on the data it was trained on (unless resume_other_data=True)."""
    if "data_fingerprint" not in st:
        print(f"Note: {path} does not record its training data (written before fingerprints); not checked")
    elif str(st["data_fingerprint"]) != data_fingerprint:
        if not cfg["resume_other_data"]:
            raise RHNError(
                f"{path} was trained on other data than {cfg['data_path']} "
                f"(data fingerprint {str(st['data_fingerprint'])[:12]}, this data "
                f"{data_fingerprint[:12]}): check dataset and data_path, or set "
                f"resume_other_data=True to continue on this data anyway"
            )
        print(f"Note: {path} was trained on other data; continuing on {cfg['data_path']} (resume_other_data=True)")


def check_best(path, resume, run_dir, best_epoch, best_valid, epoch):
    """The final pass needs the best epoch's weights (``path``, the run's best.npz): a missing or foreign
    best.npz fails now, not after training. ``resume`` continues a run at ``epoch`` whose best is
    ``best_epoch`` (valid perplexity ``best_valid``)."""
    if not best_epoch:
        return
    if not os.path.isfile(path):
        raise RHNError(
            f"{resume} continues a run whose best epoch ({best_epoch}) is kept in its best.npz, "
            f"which is neither beside it nor in {run_dir}: put that run's best.npz there "
            f"(the final evaluation needs it)"
        )
    _, st = load_checkpoint(path)
    held = int(st["best_epoch"]) if "best_epoch" in st else 0
    valid = float(st["valid_perplexity"]) if "valid_perplexity" in st else math.nan
    # A best.npz of a later epoch than the checkpoint (killed between the two saves) is written again.
    if held < epoch and (held, valid) != (best_epoch, best_valid):
        raise RHNError(
            f"{path} holds epoch {held} (valid {valid:.3f}) but {resume} continues a run whose best "
            f"is epoch {best_epoch} (valid {best_valid:.3f}): it is another run's best.npz; "
            f"put the matching one there or resume into an empty save_dir"
        )
