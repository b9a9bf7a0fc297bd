"""tf.distribute for data-parallel training: the strategy and the collectives.

``MirroredStrategy`` runs the replicas of one process on the devices of one machine
(``replicas=N``); ``MultiWorkerMirroredStrategy`` joins the processes named in
``TF_CONFIG``. Either way the rows a process trains on are split again over its local
replicas, the replicas' gradients are averaged with the strategy's all-reduce, and
clipping and the update happen once, on the average. The loop's collectives
(``rhn_core.distributed.comm``) go through the same strategy between processes.
"""

import numpy as np

from ..distributed import LocalComm
from ..errors import RHNError
from .tf_import import import_tensorflow

tf = import_tensorflow()


def split_cpu(replicas, device):
    """Several replicas on a CPU (tests, or a many-core machine): one logical device each.

    Must run before TensorFlow starts its runtime (listing logical devices starts it)."""
    on_cpu = device == "cpu" or (device == "auto" and not tf.config.list_physical_devices("GPU"))
    if replicas > 1 and on_cpu:
        try:
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
        except RuntimeError:  # already started: _devices says what it found
            pass


def _devices(replicas, device):
    """The first ``replicas`` devices of ``device``'s kind."""
    kind = "GPU" if device.startswith("/GPU") else "CPU"
    found = tf.config.list_logical_devices(kind)
    if len(found) < replicas:
        raise RHNError(
            f"replicas={replicas} needs {replicas} {kind} devices, TensorFlow sees {len(found)}: "
            f"use replicas={max(len(found), 1)} or a machine with more"
        )
    return [d.name for d in found[:replicas]]


def make_strategy(world, replicas, device, timeout):
    """The strategy of this job (None for one device in one process) and its local replica count."""
    if world.size > 1:
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout)
        try:
            strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        except (RuntimeError, ValueError) as e:
            raise RHNError(
                f"worker {world.rank} of {world.size} could not join TF_CONFIG's cluster "
                f"({str(e).splitlines()[0]}): start every worker with its own TF_CONFIG task"
            )
        return strategy, strategy.num_replicas_in_sync // world.size
    if replicas > 1:
        return tf.distribute.MirroredStrategy(_devices(replicas, device)), replicas
    return None, 1


def connect(world, strategy, local, timeout):
    """The loop's comm: ``LocalComm`` for one process, else collectives of ``strategy``."""
    return LocalComm() if world.size == 1 else StrategyComm(world, strategy, local, timeout)


class StrategyComm:
    """The ``rhn_core.distributed.comm`` interface between the workers of a MultiWorkerMirroredStrategy.

    Each worker's value enters through its first local replica (zeros from the others),
    so a sum over all replicas is the sum over the workers."""

    def __init__(self, world, strategy, local, timeout):
        self.world, self.strategy, self.local, self.timeout = world, strategy, local, timeout

    def _per_replica(self, value_of_replica):
        return self.strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(value_of_replica(ctx.replica_id_in_sync_group % self.local))
        )

    def _do(self, collective, *args):
        try:
            return collective(*args).numpy()
        except (tf.errors.DeadlineExceededError, tf.errors.UnavailableError, tf.errors.InternalError) as e:
            raise RHNError(
                f"worker {self.world.rank} of {self.world.size}: another worker stopped answering "
                f"({str(e).splitlines()[0][:300]}); it died, was killed or waited over dist_timeout="
                f"{self.timeout} s: see its output, then resume from the run's last.npz"
            )

    def sum(self, array):
        array = np.asarray(array, dtype=np.float64)
        value = self._per_replica(lambda i: array if i == 0 else np.zeros_like(array))
        return self._do(self.strategy.reduce, tf.distribute.ReduceOp.SUM, value, None)

    def gather_rows(self, array, axis):
        # each local replica hands over its share of this worker's rows: all replicas, in order, are all rows
        parts = np.array_split(np.ascontiguousarray(array), self.local, axis=axis)
        return self._do(self.strategy.gather, self._per_replica(lambda i: parts[i]), axis)

    def broadcast(self, arrays):
        out = {}
        for name in sorted(arrays):
            a = np.asarray(arrays[name])
            out[name] = self.sum(a if self.world.chief else np.zeros_like(a)).astype(a.dtype)
        return out

    def vote(self, flag):
        return bool(self.sum(np.array([float(bool(flag))]))[0] > 0)

    def close(self):
        pass
