"""Data-parallel training, the framework-free parts (torchrun, srun, tf.distribute).

One training job runs on ``World.size`` processes. The config's ``batch_size`` stays
the global batch: its rows (the B parallel streams of the corpus) are split over the
ranks, each rank carries the hidden state of its own rows, dropout masks are drawn
for the global batch from the run's seed and then sliced, and the backend averages
the gradients over the ranks before clipping, so a run equals the one-process run
with the same config.

``world`` reads who this process is from the launcher's environment; ``shard``
slices a global minibatch and its masks; ``comm`` is the interface of the
collectives the loop needs (``LocalComm`` for one process; the backends implement
it with ``torch.distributed`` and ``tf.distribute``).
"""

from .comm import LocalComm
from .shard import shard_masks
from .world import World, check_batch, detect

__all__ = ["LocalComm", "World", "check_batch", "detect", "shard_masks"]
