"""PyTorch backend: the RHN layer (usable on its own, like ``torch.nn.LSTM``),
the language model around it, and the train / eval steps the core loop drives.

Internally each layer keeps its parameters fused for speed: the input part of
micro-layer 0 for H and T side by side (``W``: in x 2H, applied to all time steps
at once, outside the time loop), and one recurrent matrix per micro-layer for H
and T together (``R``: D x H x 2H, ``b``: D x 2H). ``get_params`` / ``set_params``
translate to and from the canonical names of ``rhn_core.params``.
"""

import ctypes
import sys

import numpy as np
import torch
import torch.utils._pytree as pytree
from torch import nn
from torch.nn import functional as F

from ..distributed import World
from ..params import check_params, fuse, unfuse
from .torch_kernels import make_steps, resolve_impl
from .torch_kernels.eager import TorchSteps
from .torch_kernels.onednn import BF16Steps
from .torch_kernels.graphs import StaticStep
from . import cpu_threads
from .base import Option, check_options
from .torch_dist import connect


class RHN(nn.Module):
    """Recurrent Highway Network (Zilly et al. 2017), a stack of ``num_layers`` layers
    of recurrence depth ``depth`` with coupled carry gates (c = 1 - t).

    Shapes are batch-first. ``forward(input, state=None, input_masks=None,
    state_masks=None)`` takes input B x T x input_size and an optional state
    L x B x H (zeros if omitted) and returns (output B x T x H, state L x B x H).
    Variational dropout: pass per-layer masks (B x input width, B x H) that stay
    fixed over the sequence, e.g. from ``rhn_core.masks.bernoulli_mask``::

        rhn = RHN(input_size=128, hidden_size=256, depth=5, num_layers=2)
        out, state = rhn(torch.randn(8, 35, 128))        # 8 sequences of 35 steps
        out, state = rhn(next_chunk, state.detach())     # truncated BPTT
        masks = [torch.bernoulli(torch.full((8, n), 0.75)) / 0.75 for n in (128, 256)]
        out, state = rhn(x, input_masks=masks)           # input dropout 0.25

    Masks are constants (no gradient flows into them). Initialisation follows the paper's code: U(-init_scale, init_scale), and
    ``init_bias`` (negative: start close to carrying the state) for every T bias.
    """

    def __init__(self, input_size, hidden_size, depth, num_layers=1, init_scale=0.04, init_bias=-2.0):
        super().__init__()
        self.hidden_size, self.depth, self.num_layers = hidden_size, depth, num_layers
        sizes = [input_size] + [hidden_size] * (num_layers - 1)
        H = hidden_size
        self.W = nn.ParameterList(nn.Parameter(torch.empty(n, 2 * H)) for n in sizes)
        self.R = nn.ParameterList(nn.Parameter(torch.empty(depth, H, 2 * H)) for _ in sizes)
        self.b = nn.ParameterList(nn.Parameter(torch.empty(depth, 2 * H)) for _ in sizes)
        with torch.no_grad():
            for p in self.parameters():
                p.uniform_(-init_scale, init_scale)
            for b in self.b:
                b[:, H:] = init_bias
        self.steps = TorchSteps()  # how it computes: PyTorch operations; torch_kernels has oneDNN and Triton paths

    def forward(self, input, state=None, input_masks=None, state_masks=None):
        B, H = input.shape[0], self.hidden_size
        if state is None:
            state = input.new_zeros(self.num_layers, B, H)
        finals = []
        for l in range(self.num_layers):
            mi = None if input_masks is None else input_masks[l]
            mh = None if state_masks is None else state_masks[l]
            # The input projection of micro-layer 0 for all T steps in one product
            # (two when H and T have separate masks, i.e. a mask twice the input width).
            W, b0, n_in, project = self.W[l], self.b[l][0], input.shape[-1], self.steps.project
            if mi is not None and mi.shape[-1] == 2 * n_in:
                px = torch.cat(
                    [
                        project(input * mi[:, None, :n_in], W[:, :H], b0[:H]),
                        project(input * mi[:, None, n_in:], W[:, H:], b0[H:]),
                    ],
                    dim=-1,
                )
            else:
                px = project(input if mi is None else input * mi[:, None, :], W, b0)
            if torch.is_autocast_enabled(px.device.type):  # bf16 autocast: the recurrence stays float32
                with torch.autocast(px.device.type, enabled=False):
                    input, s = RHNRecurrence.apply(px.float(), state[l], mh, self.R[l], self.b[l], self.steps)
            else:
                input, s = RHNRecurrence.apply(px, state[l], mh, self.R[l], self.b[l], self.steps)
            finals.append(s)
        return input, torch.stack(finals)


class RHNRecurrence(torch.autograd.Function):
    """The time and micro-layer loops of one layer, with a hand-written backward pass.

    ``apply(px, s0, mh, R, b, steps)``: px B x T x 2H is the input projection of micro-layer 0
    (bias included) for all steps; s0 B x H; mh B x H (shared by H and T), B x 2H
    ([for H | for T]) or None; R D x H x 2H; b D x 2H
    (b[0] unused here: it is in px); ``steps`` computes the micro-steps (``TorchSteps``, or
    fused kernels). Returns (outputs B x T x H, final state B x H).

    Why by hand: autograd records ~8 nodes per micro-step (T x D of them per
    minibatch), and on a CPU the per-operation overhead, not arithmetic, bounds small
    models. Here the forward loop writes into preallocated buffers, the backward loop
    carries only the state gradient, and dR, db are one large product per micro-layer
    over all B x T positions, whichever ``steps`` ran the loops.
    """

    @staticmethod
    def forward(ctx, px, s0, mh, R, b, steps):
        B, T, H = px.shape[0], px.shape[1], s0.shape[-1]
        D = R.shape[0]
        N = T * D  # micro-steps; micro-step i = t * D + k reads S[i] and writes S[i + 1]
        S = px.new_empty(N + 1, B, H)
        S[0] = s0
        A = px.new_empty(N, B, 2 * H)  # activations [h | t] of every micro-step
        R = steps.weights(R)  # what the products read (bf16: cast once here, not per micro-step)
        Rs, bs, Ss, As = R.unbind(0), b.unbind(0), S.unbind(0), A.unbind(0)
        for t, px_t in enumerate(px.unbind(1)):
            for k in range(D):  # only micro-layer 0 sees the input (through px)
                i = t * D + k
                steps.forward_step(Ss[i], mh, Rs[k], px_t if k == 0 else bs[k], As[i], Ss[i + 1])
        ctx.steps = steps
        ctx.save_for_backward(mh, R, S, A)  # freed after backward unless the graph is retained
        return S[D::D].transpose(0, 1).contiguous(), S[N].clone()

    @staticmethod
    def backward(ctx, d_out, d_final):
        mh, R, S, A = ctx.saved_tensors
        B, T, H = d_out.shape
        D = R.shape[0]
        N = T * D
        d_pre = torch.empty_like(A)
        ds = ctx.steps.backward_state(mh, R, S, A, d_out, d_final, d_pre)
        split = mh is not None and mh.shape[-1] == 2 * H
        dR, db = torch.empty_like(R, dtype=S.dtype), torch.zeros(D, 2 * H, dtype=S.dtype, device=R.device)
        product = ctx.steps.product
        for k in range(D):
            dk = d_pre[k::D].reshape(-1, 2 * H)
            if split:
                for cols in (slice(None, H), slice(H, None)):
                    dR[k][:, cols] = product((S[k:N:D] * mh[:, cols]).reshape(-1, H).t(), dk[:, cols])
            else:
                a = S[k:N:D] if mh is None else S[k:N:D] * mh
                product(a.reshape(-1, H).t(), dk, out=dR[k])
            if k:
                db[k] = dk.sum(0)
        return d_pre[0::D].transpose(0, 1), ds, None, dR, db, None


class RHNLanguageModel(nn.Module):
    """Embedding -> RHN stack -> softmax, with the original's in_size and tying rules."""

    def __init__(self, spec):
        super().__init__()
        self.spec = spec
        V, H = spec.vocab_size, spec.hidden_size
        self.embedding = nn.Parameter(torch.empty(V, spec.in_size))
        self.rhn = RHN(spec.in_size, H, spec.depth, spec.num_layers, spec.init_scale, spec.init_bias)
        self.softmax_w = None if spec.tied else nn.Parameter(torch.empty(H, V))
        self.softmax_b = nn.Parameter(torch.empty(V))

    def forward(self, x, state, masks=None):
        """Logits B x T x V and the final state L x B x H."""
        e = F.embedding(x, self.embedding)
        if masks is not None and masks.x is not None:
            e = e * masks.x[..., None]
        out, state = self.rhn(e, state, masks and masks.i, masks and masks.h)
        if masks is not None and masks.o is not None:
            out = out * masks.o[:, None, :]
        w = self.embedding.t() if self.softmax_w is None else self.softmax_w
        return self.rhn.steps.project(out, w, self.softmax_b), state

    def loss(self, x, y, state, masks=None):
        """C = sum_t mean_b NLL (the original's loss scale) and the final state."""
        logits, state = self.forward(x, state, masks)
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum")
        return nll / x.shape[0], state


def keep_freed_memory():
    """Ask glibc to keep large freed blocks instead of unmapping them after every step.

    Each CPU training step allocates and frees the same large tensors (B*T x V logits
    and their gradients: 90 MB for B=64, T=35, V=10,000). By default glibc returns
    blocks over 32 MB to the OS, so every step pays for page faults on fresh memory
    (measured: 148 -> 74 ms per step for that shape, about 5 % for ptb_sota). The
    memory stays with the process, which is what a training loop wants anyway.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl): nothing to tune
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 30) and libc.mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1))


def pick_device(device, world=None):
    world = world or World()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and world.size > 1:  # one GPU per rank of this node (or the one it was given)
        device = f"cuda:{world.local_rank % max(torch.cuda.device_count(), 1)}"
    return torch.device(device)


class Backend:
    """The contract the core loop drives (``rhn_core.backends.base``)."""

    name = "torch"
    OPTIONS = {
        "rhn_impl": Option("auto"),
        "cuda_graphs": Option(True),
        "precision": Option("float32"),
        "replicas": Option(
            1,
            (1,),
            "torch runs one device per process: start one process per device, "
            "torchrun --nproc_per_node=N rhn_train_torch.py ...",
        ),
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
        options, world = check_options(self.name, self.OPTIONS, options), world or World()
        rhn_impl, cuda_graphs, precision = options["rhn_impl"], options["cuda_graphs"], options["precision"]
        self.spec, self.weight_decay, self.max_grad_norm = spec, weight_decay, max_grad_norm
        self.device, self.dtype = pick_device(device, world), getattr(torch, dtype)
        self.threads = cpu_threads(threads)
        torch.set_num_threads(self.threads)
        if self.device.type == "cuda" and world.size > 1:
            torch.cuda.set_device(self.device)  # NCCL uses the current device
        if self.device.type == "cpu":
            keep_freed_memory()
        self.model = RHNLanguageModel(spec).to(self.device, self.dtype)
        self.params = list(self.model.parameters())
        self.set_params(params)
        self.impl = resolve_impl(rhn_impl, self.device.type, self.dtype, spec.hidden_size, precision)
        self.model.rhn.steps = make_steps(self.impl, precision)
        self.precision = precision
        # bf16 autocast (outside the recurrence, which the fused kernels keep float32) where the steps do not
        # cast their own products (onednn.BF16Steps: every product, on CPU)
        self.autocast = precision == "bf16" and not isinstance(self.model.rhn.steps, BF16Steps)
        if precision == "tf32" and self.device.type == "cuda":  # cuBLAS products of this process
            torch.backends.cuda.matmul.allow_tf32 = True
        # eager: plain calls; static: the same step on static buffers (CPU tests); graph: CUDA graphs
        # (not with several ranks: the gradient all-reduce runs between the step's kernels, outside a graph,
        # where the collective timeout watches it)
        self.step_mode = "graph" if cuda_graphs and self.device.type == "cuda" and world.size == 1 else "eager"
        self._static_steps = {}
        self.comm = connect(world, self.device, timeout)  # LocalComm alone; torch.distributed otherwise

    # --- canonical parameters -------------------------------------------------
    def _fused_names(self):
        """Fused-layout names (``params.fuse``) of the model's parameters, in order."""
        return [n.replace("rhn.", "").replace(".", "") for n, _ in self.model.named_parameters()]

    def _canonical(self, tensors):
        """Canonical dict of NumPy arrays from model-ordered tensors (params or grads)."""
        return unfuse({n: t.detach().cpu().numpy() for n, t in zip(self._fused_names(), tensors)}, self.spec)

    def get_params(self):
        return self._canonical(self.params)

    def set_params(self, params):
        check_params(params, self.spec, "parameters")
        fused = fuse(params, self.spec)
        with torch.no_grad():
            for name, p in zip(self._fused_names(), self.params):
                p.copy_(torch.as_tensor(fused[name], dtype=self.dtype))

    # --- state and data -------------------------------------------------------
    def zero_state(self, batch_size):
        return torch.zeros(
            self.spec.num_layers, batch_size, self.spec.hidden_size, dtype=self.dtype, device=self.device
        )

    def state_to_numpy(self, state):
        return list(state.detach().cpu().numpy())

    def state_from_numpy(self, arrays):
        return torch.as_tensor(np.stack(arrays), dtype=self.dtype, device=self.device)

    def _ids(self, a):
        # int64 on the host first: a memory-mapped corpus is read-only, which torch warns about.
        return torch.from_numpy(np.asarray(a, dtype=np.int64)).to(self.device, non_blocking=True)

    def _masks(self, masks):
        if masks is None:
            return None
        as_t = lambda a: torch.as_tensor(a, dtype=self.dtype).to(self.device, non_blocking=True)
        many = lambda seq: None if seq is None else [as_t(a) for a in seq]
        return type(masks)(
            None if masks.x is None else as_t(masks.x),
            many(masks.i),
            many(masks.h),
            None if masks.o is None else as_t(masks.o),
        )

    def to_numpy(self, values):
        """Stack device scalars and read them back in one transfer."""
        return torch.stack(list(values)).detach().cpu().double().numpy()

    # --- steps ------------------------------------------------------------------
    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast)

    def _objective_and_grads(self, x, y, masks, state):
        """J, dJ/dtheta (weight decay included) and the final state, from device tensors."""
        with self._autocast():
            loss, state = self.model.loss(x, y, state, masks)
        grads = torch.autograd.grad(loss, self.params)
        if self.comm.world.size > 1:  # data parallel: the global batch's loss and gradient
            loss, grads = self.comm.average(loss.detach(), grads)
        with torch.no_grad():
            sq = torch._foreach_norm(self.params)
            l2 = 0.5 * self.weight_decay * torch.stack(sq).square().sum()
            # d/dtheta of weight_decay/2 * theta^2, added before clipping as in the original; in place
            # (the gradients are this step's own tensors): no second copy of every parameter per step
            grads = list(grads)
            torch._foreach_add_(grads, self.params, alpha=self.weight_decay)
        return loss.detach() + l2, grads, state.detach()

    def _apply_update(self, grads, lr):
        """theta -= lr * g * max_grad_norm / max(||g||, max_grad_norm); ``lr`` a device scalar."""
        with torch.no_grad():
            norm = torch.stack(torch._foreach_norm(grads)).norm()
            scale = self.max_grad_norm / torch.clamp(norm, min=self.max_grad_norm)
            torch._foreach_mul_(grads, -lr * scale)
            torch._foreach_add_(self.params, grads)

    def _train_body(self, x, y, masks, state, lr):
        """The whole training step on device tensors: what a CUDA graph records."""
        objective, grads, state = self._objective_and_grads(x, y, masks, state)
        self._apply_update(grads, lr)
        return objective, state

    def _eval_body(self, x, y, state):
        with torch.no_grad(), self._autocast():
            return self.model.loss(x, y, state)

    def _run(self, kind, body, args):
        """``body(*args)``, directly or as a static step (one per kind and input shapes)."""
        if self.step_mode == "eager":
            return body(*args)
        flat, tree = pytree.tree_flatten(args)  # the masks' structure (which are None) is part of the key
        key = (kind, tree, tuple(None if t is None else t.shape for t in flat))
        step = self._static_steps.get(key)
        if step is None:
            step = self._static_steps[key] = StaticStep(
                lambda *leaves: body(*pytree.tree_unflatten(leaves, tree)),
                flat,
                capture=self.step_mode == "graph",
                keep=self.params,
            )
        return step(flat)

    def train_step(self, x, y, masks, state, lr):
        """One SGD step on J, clipped to max_grad_norm (global norm); no host sync."""
        lr = torch.tensor(lr, dtype=self.dtype).to(self.device, non_blocking=True)
        return self._run("train", self._train_body, (self._ids(x), self._ids(y), self._masks(masks), state, lr))

    def eval_step(self, x, y, state):
        return self._run("eval", self._eval_body, (self._ids(x), self._ids(y), state))

    def log_probs(self, x, state, masks=None):
        """Log-probabilities (B x T x V) and the final state, as NumPy (tests, MC evaluation)."""
        with torch.no_grad():
            logits, state = self.model(self._ids(x), state, self._masks(masks))
            return torch.log_softmax(logits, -1).cpu().numpy(), self.state_to_numpy(state)

    def target_log_probs(self, x, y, state, masks=None):
        """log p(y) at every position (B x T, NumPy) with ``masks`` applied, and the state."""
        with torch.no_grad():
            logits, state = self.model(self._ids(x), state, self._masks(masks))
            nll = F.cross_entropy(logits.transpose(1, 2), self._ids(y), reduction="none")
            return (-nll).cpu().double().numpy(), state

    def gradients(self, x, y, masks, state):
        objective, grads, _ = self._objective_and_grads(self._ids(x), self._ids(y), self._masks(masks), state)
        return float(objective), self._canonical(grads)
