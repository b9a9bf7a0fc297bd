"""Framework backends: the one registry of them, loaded lazily by name so ``import rhn_core`` imports no framework.

A backend is one module whose class ``Backend`` satisfies the contract in ``rhn_core.backends.base``
(constructor, methods, attributes, the collectives of its ``comm``), plus one line in ``BACKENDS``
below. Everything else reads this registry: the entry points and Sacred's recorded dependencies
(``rhn_core.experiment``), the sweep's child command lines (``rhn_core.sweep.runner``), the launcher
detection of data-parallel jobs (``rhn_core.distributed.world``) and the tests. This module imports
nothing of the package, so any part of it may read the registry.
"""

import importlib
import importlib.util
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Registered:
    """What the rest of the package needs to know about a backend, without importing it."""

    module: str  # the module that defines Backend
    entry: tuple  # its command line: python -m <entry...> [Sacred arguments]
    framework: str  # the top-level package it imports (absent: the backend is unavailable; tests skip)
    distributions: tuple  # installed distributions whose versions Sacred records with a run
    launcher: str = ""  # how its processes learn their place in a job (distributed.world.LAUNCHERS); '' alone
    replicas: bool = False  # it runs several devices in one process (the replicas key)


BACKENDS = {
    "torch": Registered(
        "rhn_core.backends.torch_rhn", ("rhn_train_torch",), "torch", ("torch",), launcher="torch.distributed"
    ),
    "tf": Registered(
        "rhn_core.backends.tf_rhn",
        ("rhn_train_tf",),
        "tensorflow",
        ("tensorflow", "tensorflow-cpu", "keras"),
        launcher="tf.distribute",
        replicas=True,
    ),
    "numpy": Registered("rhn_core.backends.numpy_rhn", ("rhn_core", "numpy"), "numpy", ("numpy",)),
}


def load_backend(name):
    """The backend module called ``name``."""
    return importlib.import_module(BACKENDS[name].module)


def available(name):
    """Whether the framework of backend ``name`` is installed (found without importing it)."""
    return importlib.util.find_spec(BACKENDS[name].framework) is not None


def cpu_threads(threads=0):
    """Threads a backend's CPU math may use: ``threads`` when positive, else OMP_NUM_THREADS when
    set, else the cores this process may run on (its affinity: what Slurm or taskset granted)."""
    if threads > 0:
        return threads
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        pass
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
