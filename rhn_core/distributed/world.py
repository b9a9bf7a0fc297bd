"""Who this process is in a data-parallel job, read from its launcher's environment.

torch: ``torchrun`` sets RANK, WORLD_SIZE, LOCAL_RANK (and MASTER_ADDR/PORT);
``srun`` sets SLURM_PROCID, SLURM_STEP_NUM_TASKS, SLURM_LOCALID for each task of a
job step (the batch script itself has SLURM_NTASKS but is one process, so the step's
count is what counts). TensorFlow: ``TF_CONFIG`` names the cluster and this task.
"""

import json
import os
import subprocess
from dataclasses import dataclass

from ..backends import BACKENDS
from ..errors import RHNError


@dataclass(frozen=True)
class World:
    """This process's place in the job: rank 0 of 1 when it runs alone."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    launcher: str = ""  # torchrun, srun, TF_CONFIG; '' for a single process

    @property
    def chief(self):
        """Rank 0 alone prints, writes checkpoints and talks to Sacred's observers."""
        return self.rank == 0

    def rows(self, batch_size):
        """The slice of the global batch's rows this rank trains on (contiguous, equal shares)."""
        share = batch_size // self.size
        return slice(self.rank * share, (self.rank + 1) * share)


def _int(environ, key):
    try:
        return int(environ[key])
    except ValueError:
        raise RHNError(f"{key}={environ[key]!r} is not an integer: start the job with torchrun or srun")


def _first_slurm_host(environ):
    """The step's first host (rank 0's), from Slurm's compressed node list."""
    nodes = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST", "")
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodes], capture_output=True, text=True, timeout=30, check=True
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        out = []
    if not out:
        raise RHNError(
            f"cannot find rank 0's host in SLURM node list {nodes!r}: "
            f"export MASTER_ADDR=<first node's host name> before srun"
        )
    return out[0]


def _torch_world(environ):
    if environ.get("RHN_RANKS_FROM") == "srun":  # filled in below by an earlier call: srun started this job
        environ = {k: v for k, v in environ.items() if k not in ("WORLD_SIZE", "RANK")}
    if "WORLD_SIZE" in environ and "RANK" in environ:
        return World(
            _int(environ, "RANK"),
            _int(environ, "WORLD_SIZE"),
            _int(environ, "LOCAL_RANK") if "LOCAL_RANK" in environ else 0,
            "torchrun",
        )
    if "SLURM_STEP_NUM_TASKS" in environ and "SLURM_PROCID" in environ:
        world = World(
            _int(environ, "SLURM_PROCID"),
            _int(environ, "SLURM_STEP_NUM_TASKS"),
            _int(environ, "SLURM_LOCALID") if "SLURM_LOCALID" in environ else 0,
            "srun",
        )
        if world.size > 1:  # torch.distributed's env:// rendezvous reads these
            if "MASTER_ADDR" not in environ:
                environ["MASTER_ADDR"] = _first_slurm_host(environ)
            environ.setdefault("MASTER_PORT", "29500")
            if "RANK" not in environ:  # set here, not by torchrun: a later call must still say srun
                environ["RHN_RANKS_FROM"] = "srun"
            environ.setdefault("RANK", str(world.rank))
            environ.setdefault("WORLD_SIZE", str(world.size))
            environ.setdefault("LOCAL_RANK", str(world.local_rank))
        return world
    return World()


def _tf_world(environ):
    text = environ.get("TF_CONFIG", "")
    if not text:
        return World()
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        # The order tf.distribute numbers tasks in: the chief (if any) first, then the workers.
        tasks = [(kind, i) for kind in ("chief", "worker") for i in range(len(cluster.get(kind, [])))]
        rank = tasks.index((task["type"], int(task["index"])))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise RHNError(
            "TF_CONFIG is not a tf.distribute cluster: give JSON such as "
            '{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker", "index": 0}}'
        )
    return World(rank, len(tasks), 0, "TF_CONFIG")


# How a backend's processes learn their place in a job (the registry's ``launcher``); alone without one.
LAUNCHERS = {"torch.distributed": _torch_world, "tf.distribute": _tf_world, "": lambda environ: World()}


def detect(backend_name, environ=None):
    """The ``World`` of this process for ``backend_name`` (read by the launcher its registry entry names)."""
    environ = os.environ if environ is None else environ
    return LAUNCHERS[BACKENDS[backend_name].launcher](environ)


def check_batch(world, batch_size, replicas=1, backend_name="tf"):
    """One-line error, before any work, when the global batch cannot be split evenly.

    ``replicas`` counts only for a backend that runs several devices in one process; any other refuses
    replicas != 1 itself (its options), with its own advice."""
    if not BACKENDS[backend_name].replicas:
        replicas = 1
    parts = world.size * replicas
    if parts == 1:
        return
    what = (
        f"{world.size} processes"
        if replicas == 1
        else f"{replicas} replicas"
        if world.size == 1
        else f"{world.size} processes x {replicas} replicas"
    )
    if parts > batch_size:
        raise RHNError(
            f"batch_size={batch_size} is smaller than the {parts} parts it is split into "
            f"({what}): use at most {batch_size} or a larger batch_size"
        )
    if batch_size % parts:
        raise RHNError(
            f"batch_size={batch_size} does not split evenly over {what}: use a batch_size "
            f"divisible by {parts} (each part trains batch_size / {parts} rows)"
        )
