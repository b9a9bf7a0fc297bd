"""The contract between the core and a backend, as code.

The training loop (``rhn_core.loop``), MC evaluation (``rhn_core.mc``) and sampling
(``rhn_core.sample``) drive a backend only through ``Backend`` below, and the
collectives only through ``Comm``. A backend module defines a class ``Backend`` whose
constructor is ``BackendFactory.__call__`` and whose instances satisfy ``Backend``
(``isinstance`` holds: the protocols are runtime-checkable). tests/test_contract.py
checks every registered backend against both, signatures included, and that the core
calls nothing on a backend outside them.

What one backend alone understands (torch's fused kernels, CUDA graphs, TF's replicas)
travels as ``options``, one mapping the backend checks itself against its ``OPTIONS``
(``check_options``): an option it does not know, or a value it does not support, is one
line saying what to use instead, and the shared loop knows none of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Protocol, Sequence, Tuple, runtime_checkable

import numpy as np

from ..distributed.world import World
from ..errors import RHNError
from ..masks import Masks
from ..params import ModelSpec

# The config keys the loop hands to every backend as ``options`` (their values straight from the config).
OPTION_KEYS = ("rhn_impl", "cuda_graphs", "precision", "replicas")

State = Any  # a backend's own hidden state (L x B x H on its device); NumPy only via state_to_numpy
Scalar = Any  # a backend's own scalar (on its device); NumPy only via to_numpy


@runtime_checkable
class Comm(Protocol):
    """The collectives the loop needs, over the processes of one job (``LocalComm`` when alone).

    Each answers the same on every rank; a rank that dies or hangs ends the others with an
    RHNError after the job's timeout, never a hang."""

    world: World  # this process's rank and the job's size

    def sum(self, array: np.ndarray) -> np.ndarray:
        """Element-wise sum over the ranks (float64 NumPy)."""

    def gather_rows(self, array: np.ndarray, axis: int) -> np.ndarray:
        """The ranks' arrays concatenated along ``axis``, in rank order."""

    def broadcast(self, arrays: Mapping[str, np.ndarray]) -> dict:
        """Rank 0's dict of NumPy arrays on every rank (the others pass arrays of the same names and shapes)."""

    def vote(self, flag: bool) -> bool:
        """Has any rank raised its flag? May answer for the previous call; every rank gets the same answer."""

    def close(self) -> None:
        """Leave the group (the last collective of a run)."""


@runtime_checkable
class Backend(Protocol):
    """One model on one device, with the steps the loop drives.

    Parameters cross the boundary as the canonical dict of NumPy arrays (``rhn_core.params``),
    minibatches as NumPy ids (B x T) and ``Masks``; losses and states stay on the device
    until ``to_numpy`` / ``state_to_numpy`` read them (the loop batches those reads)."""

    name: str  # the registry's name of the backend ('torch', 'tf', 'numpy')
    OPTIONS: Mapping[str, Option]  # the backend-specific options it accepts (check_options)
    spec: ModelSpec
    weight_decay: float  # lambda of J = C + lambda/2 * sum(theta^2)
    max_grad_norm: float  # the global gradient norm a step is clipped to
    device: Any  # where it computes, as the run's banner shows it
    threads: int  # CPU threads its math uses
    comm: Comm  # the collectives of its job (LocalComm alone)

    def get_params(self) -> dict:
        """The canonical parameters as NumPy arrays (copies)."""

    def set_params(self, params: Mapping[str, np.ndarray]) -> None:
        """Load canonical parameters (checked against ``spec``: RHNError on a wrong name or shape)."""

    def zero_state(self, batch_size: int) -> State:
        """The state of a stream's start: zeros, L x batch_size x H."""

    def state_to_numpy(self, state: State) -> list:
        """A state as L NumPy arrays B x H (for checkpoints)."""

    def state_from_numpy(self, arrays: Sequence[np.ndarray]) -> State:
        """The state of L NumPy arrays B x H."""

    def train_step(self, x: np.ndarray, y: np.ndarray, masks: Masks, state: State, lr: float) -> Tuple[Scalar, State]:
        """One SGD step on J = C + weight decay, clipped to max_grad_norm (global norm): (J, final state)."""

    def eval_step(self, x: np.ndarray, y: np.ndarray, state: State) -> Tuple[Scalar, State]:
        """The batch-mean loss C (no dropout, no update) and the final state."""

    def gradients(self, x: np.ndarray, y: np.ndarray, masks: Masks, state: State) -> Tuple[float, dict]:
        """J and dJ/dtheta as a canonical dict, without updating (for tests)."""

    def log_probs(self, x: np.ndarray, state: State, masks: Optional[Masks] = None) -> Tuple[np.ndarray, list]:
        """Log-probabilities B x T x V (NumPy) and the final state as NumPy arrays (sampling)."""

    def target_log_probs(
        self, x: np.ndarray, y: np.ndarray, state: State, masks: Optional[Masks] = None
    ) -> Tuple[np.ndarray, State]:
        """log p(y) at every position, B x T float64 NumPy, with ``masks`` applied (MC evaluation)."""

    def to_numpy(self, values: Sequence[Scalar]) -> np.ndarray:
        """Scalars of this backend as one float64 NumPy array: the only device-to-host read of a pass."""


class BackendFactory(Protocol):
    """The constructor of a backend module's ``Backend`` class."""

    def __call__(
        self,
        spec: ModelSpec,
        params: Mapping[str, np.ndarray],
        weight_decay: float = 0.0,
        max_grad_norm: float = 10.0,
        device: str = "auto",
        dtype: str = "float32",
        *,
        threads: int = 0,
        world: Optional[World] = None,
        timeout: float = 600,
        options: Optional[Mapping[str, Any]] = None,
    ) -> Backend:
        """A backend holding ``params``; with ``world`` of several processes it joins their group (a
        collective, waiting at most ``timeout`` seconds). ``device``: auto, cpu, cuda or cuda:N;
        ``threads``: CPU threads (0: what the process may use); ``options``: see ``check_options``."""


@dataclass(frozen=True)
class Option:
    """A backend-specific option: its default, the values the backend supports (None: any value the
    config accepts) and what to say about another value."""

    default: Any
    values: Optional[Tuple[Any, ...]] = None
    hint: str = ""


def check_options(backend: str, supported: Mapping[str, Option], options: Optional[Mapping[str, Any]]) -> dict:
    """``options`` completed with the defaults of ``supported``; an unknown option, or a value the backend
    does not support, is one RHNError line saying what to use."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(supported))
    if unknown:
        known = ", ".join(sorted(supported)) or "none"
        raise RHNError(f"{unknown[0]} is not an option of the {backend} backend (its options: {known})")
    for key, value in options.items():
        option = supported[key]
        if option.values is not None and value not in option.values:
            use = option.hint or "use " + " or ".join(f"{key}={v}" for v in option.values)
            raise RHNError(f"{key}={value} is not supported by the {backend} backend: {use}")
    return {**{key: option.default for key, option in supported.items()}, **options}
