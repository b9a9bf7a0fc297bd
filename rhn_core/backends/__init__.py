"""Framework backends, loaded lazily by name so ``import rhn_core`` imports no framework.

A backend module exposes ``Backend(spec, params, weight_decay, max_grad_norm,
device, dtype, threads)`` with the narrow interface the training loop uses:

    get_params() -> dict of NumPy arrays        set_params(dict)
    zero_state(B) -> state                      state_to_numpy(state) / state_from_numpy(list)
    train_step(x, y, masks, state, lr) -> (J, state)   one clipped SGD step, J stays on device
    eval_step(x, y, state) -> (C, state)                no dropout, no update
    gradients(x, y, masks, state) -> (J, dict)  canonical gradients (for tests)
    log_probs(x, state, masks) -> (array, list) log-probabilities B x T x V, final state
    target_log_probs(x, y, state, masks) -> (array, state)   log p(y), B x T (MC evaluation)
    to_numpy(values) -> np.ndarray              the only device -> host read
"""
import importlib
import os

BACKENDS = {"torch": "rhn_core.backends.torch_rhn", "tf": "rhn_core.backends.tf_rhn"}


def load_backend(name):
    """The backend module called ``name``."""
    return importlib.import_module(BACKENDS[name])


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
