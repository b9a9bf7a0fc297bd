"""torch.distributed for data-parallel training: the process group and the collectives.

The gradient average is one ``all_reduce`` of a flat buffer (loss and all gradients,
the way DDP buckets them) on the default group: NCCL when the model is on CUDA, gloo
on CPU. The loop's own collectives (stop vote, evaluation sums, the hidden state for
checkpoints, the best weights) are small and host-side, so they run on a gloo group
(the default group itself on CPU). Every collective has the job's timeout: a rank that
dies or hangs ends the others with a one-line error instead of a hang.
"""

import datetime

import numpy as np
import torch
import torch.distributed as dist

from ..distributed import LocalComm
from ..errors import RHNError


def connect(world, device, timeout):
    """The comm of ``world`` (``LocalComm`` for one process), joining the process group."""
    return LocalComm() if world.size == 1 else TorchComm(world, device, timeout)


class TorchComm:
    """The ``rhn_core.distributed.comm`` interface on torch.distributed, plus ``average``."""

    def __init__(self, world, device, timeout):
        self.world, self.timeout = world, timeout
        backend = "nccl" if device.type == "cuda" else "gloo"
        wait = datetime.timedelta(seconds=timeout)
        try:
            if not dist.is_initialized():
                dist.init_process_group(
                    backend, init_method="env://", rank=world.rank, world_size=world.size, timeout=wait
                )
            self.control = dist.new_group(backend="gloo", timeout=wait) if backend == "nccl" else None
        except (RuntimeError, ValueError) as e:
            raise RHNError(
                f"rank {world.rank} of {world.size} could not join the others within {timeout} s "
                f"({_first_line(e)}): start every rank with the same torchrun/srun command "
                f"(MASTER_ADDR and MASTER_PORT must reach rank 0)"
            )
        self._pending = None

    def _do(self, collective, *args, **kwargs):
        """Run a collective; a dead, killed or stuck rank becomes a one-line error here."""
        try:
            return collective(*args, **kwargs)
        except RuntimeError as e:
            raise RHNError(
                f"rank {self.world.rank} of {self.world.size}: another rank stopped answering "
                f"({_first_line(e)}); it died, was killed or waited over dist_timeout="
                f"{self.timeout} s: see its output, then resume from the run's last.npz"
            )

    # --- the training step's gradient average (default group: NCCL or gloo) ---------
    def average(self, loss, grads):
        """(loss, grads) averaged over the ranks: each rank's are those of its rows' batch mean,
        so the average is the gradient of the global batch's mean, as in one process."""
        flat = torch.cat([loss.reshape(1)] + [g.reshape(-1) for g in grads])
        self._do(dist.all_reduce, flat)
        flat.div_(self.world.size)
        parts = torch.split(flat[1:], [g.numel() for g in grads])
        return flat[0], [p.view_as(g) for p, g in zip(parts, grads)]

    # --- the loop's collectives (host side, gloo) -----------------------------------
    def sum(self, array):
        t = torch.from_numpy(np.array(array, dtype=np.float64))
        self._do(dist.all_reduce, t, group=self.control)
        return t.numpy()

    def gather_rows(self, array, axis):
        t = torch.from_numpy(np.ascontiguousarray(array))
        parts = [torch.empty_like(t) for _ in range(self.world.size)]
        self._do(dist.all_gather, parts, t, group=self.control)
        return np.concatenate([p.numpy() for p in parts], axis=axis)

    def broadcast(self, arrays):
        out = {}
        for name in sorted(arrays):  # the same order on every rank
            t = torch.from_numpy(np.array(arrays[name]))
            self._do(dist.broadcast, t, src=0, group=self.control)
            out[name] = t.numpy()
        return out

    def vote(self, flag):
        """Any rank's flag, decided one call late so the step never waits for it (the vote
        runs in the background meanwhile); every rank gets the same answer at the same call."""
        decided = False
        if self._pending is not None:
            work, t = self._pending
            self._do(work.wait)
            decided, self._pending = bool(t.item()), None
        if not decided:
            t = torch.tensor([int(bool(flag))], dtype=torch.int32)
            self._pending = (self._do(dist.all_reduce, t, op=dist.ReduceOp.MAX, group=self.control, async_op=True), t)
        return decided

    def close(self):
        if dist.is_initialized():
            dist.destroy_process_group()


def _first_line(e):
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
