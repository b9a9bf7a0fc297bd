"""The collectives the training loop needs, and their one-process version.

A backend gives the loop a ``comm`` with this interface (``LocalComm`` when it runs
alone; ``torch.distributed`` / ``tf.distribute`` otherwise)::

    world                       the World (rank, size)
    sum(array) -> array         element-wise sum over ranks (float64 NumPy)
    gather_rows(array, axis)    the ranks' arrays concatenated along axis, in rank order
    broadcast(arrays) -> dict   rank 0's dict of NumPy arrays on every rank (same names, shapes)
    vote(flag) -> bool          has any rank raised its flag? (may answer for the previous call:
                                every rank gets the same answer at the same call)
    close()                     leave the group

The gradient average itself lives inside each backend's training step.
"""

from .world import World


class LocalComm:
    """One process: every collective is the identity."""

    world = World()

    def sum(self, array):
        return array

    def gather_rows(self, array, axis):
        return array

    def broadcast(self, arrays):
        return arrays

    def vote(self, flag):
        return bool(flag)

    def close(self):
        pass
