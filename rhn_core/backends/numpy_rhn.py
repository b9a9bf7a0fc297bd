"""NumPy backend: the float64 reference (``rhn_core.reference``) behind the backend contract.

It runs the whole loop (train, evaluate, resume, MC evaluation, sampling) with no framework
installed, on one CPU process, in float64: slow (Python loops over every micro-step), and
exact, which is what it is for: a first run on a machine without torch or TensorFlow, the
oracle the other backends are tested against driven by the same loop, and the smallest
example of a backend (one file and one line of ``rhn_core.backends.BACKENDS``).

Its state is the reference's: a list of L NumPy arrays B x H; its scalars are floats.
"""

import numpy as np

from .. import reference
from ..distributed import LocalComm, World
from ..errors import RHNError
from ..masks import NO_MASKS
from ..params import check_params
from . import cpu_threads
from .base import Option, check_options


def _copy(params):
    return {name: np.array(value, dtype=np.float64) for name, value in params.items()}


class Backend:
    """The contract the core loop drives (``rhn_core.backends.base``), computed by ``rhn_core.reference``."""

    name = "numpy"
    OPTIONS = {
        "rhn_impl": Option("auto", ("auto", "reference")),  # the reference is its only implementation
        "cuda_graphs": Option(True),  # nothing to capture: no CUDA
        "precision": Option(
            "float32", ("float32",), "NumPy computes every product in float64: use precision=float32 (the default)"
        ),
        "replicas": Option(1, (1,), "the numpy backend runs one process on the CPU: use replicas=1"),
    }

    def __init__(
        self,
        spec,
        params,
        weight_decay=0.0,
        max_grad_norm=10.0,
        device="auto",
        dtype="float32",
        *,
        threads=0,
        world=None,
        timeout=600,
        options=None,
    ):
        check_options(self.name, self.OPTIONS, options)
        if dtype != "float64":
            raise RHNError(f"dtype={dtype}: the numpy backend computes in float64 only: use dtype=float64")
        if device not in ("auto", "cpu"):
            raise RHNError(f"device={device}: the numpy backend runs on the CPU: use device=cpu or device=auto")
        if (world or World()).size > 1:
            raise RHNError("the numpy backend runs in one process: start it without torchrun, srun or TF_CONFIG")
        self.spec, self.weight_decay, self.max_grad_norm = spec, weight_decay, max_grad_norm
        self.device = "cpu"
        # NumPy's BLAS takes its thread count from the environment at start (OMP_NUM_THREADS); the products
        # here are small, so this is what the run reports, not a setting.
        self.threads = cpu_threads(threads)
        self.comm = LocalComm()
        self.set_params(params)

    # --- canonical parameters -------------------------------------------------
    def get_params(self):
        return _copy(self.params)

    def set_params(self, params):
        check_params(params, self.spec, "parameters")
        self.params = _copy(params)

    # --- state and data -------------------------------------------------------
    def zero_state(self, batch_size):
        return [np.zeros((batch_size, self.spec.hidden_size)) for _ in range(self.spec.num_layers)]

    def state_to_numpy(self, state):
        return [np.array(s, dtype=np.float64) for s in state]

    def state_from_numpy(self, arrays):
        return [np.array(a, dtype=np.float64) for a in arrays]

    def to_numpy(self, values):
        return np.array([float(v) for v in values], dtype=np.float64)

    # --- steps ------------------------------------------------------------------
    def train_step(self, x, y, masks, state, lr):
        """One SGD step on J, clipped to max_grad_norm (global norm)."""
        objective, final, grads = reference.objective_and_gradients(
            self.params, self.spec, x, y, state, masks or NO_MASKS, self.weight_decay
        )
        self.params = reference.clipped_sgd_step(self.params, grads, lr, self.max_grad_norm)
        return objective, final

    def eval_step(self, x, y, state):
        log_probs, final, _ = reference.forward(self.params, self.spec, x, state)
        return reference.loss(log_probs, y), final

    def gradients(self, x, y, masks, state):
        objective, _, grads = reference.objective_and_gradients(
            self.params, self.spec, x, y, state, masks or NO_MASKS, self.weight_decay
        )
        return float(objective), grads

    def log_probs(self, x, state, masks=None):
        log_probs, final, _ = reference.forward(self.params, self.spec, x, state, masks or NO_MASKS)
        return log_probs, final

    def target_log_probs(self, x, y, state, masks=None):
        log_probs, final, _ = reference.forward(self.params, self.spec, x, state, masks or NO_MASKS)
        return np.take_along_axis(log_probs, np.asarray(y)[..., None], axis=-1)[..., 0], final
