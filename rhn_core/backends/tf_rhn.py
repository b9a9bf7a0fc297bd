"""TensorFlow 2 backend: the RHN cell as a Keras 3 layer (usable inside
``keras.layers.RNN`` or on its own), the stacked layer and language model around
it, and the train / eval steps the core loop drives, compiled with ``tf.function``.

The mirror image of ``torch_rhn.py``: the same fused parameter layout
(``rhn_core.params.fuse``: W in x 2H, R D x H x 2H, b D x 2H per layer), the input
projection of micro-layer 0 applied to all time steps outside the time loop, one
product per micro-layer for H and T together, and a hand-written gradient of the
recurrence (``recurrence``; the cell alone uses TensorFlow's autodiff).

``precision=bf16`` (CPU): every product of the language model's step, and of its gradient,
takes bfloat16 inputs (``low``) and gives a float32 result (oneDNN accumulates in float32 and
rounds its result to bfloat16 once); variables, state, gates, loss and update stay float32.
"""

import os

import numpy as np

from .tf_import import import_tensorflow

tf = import_tensorflow()  # without its native start-up notices (see tf_import)
import keras  # noqa: E402

from ..errors import RHNError
from ..distributed import World
from ..masks import Masks
from ..params import check_params, fuse, unfuse
from . import cpu_threads
from .base import Option, check_options
from .cpu_bf16 import require_bf16_products
from .tf_dist import connect, make_strategy, split_cpu

if keras.backend.backend() != "tensorflow":
    raise ImportError(
        f"the TF backend needs Keras on TensorFlow, not {keras.backend.backend()!r}: "
        f"unset KERAS_BACKEND or set it to tensorflow"
    )


def _split(mh, H):
    """True when H and T have separate state masks: mh is B x 2H, [for H | for T]."""
    return mh is not None and mh.shape[-1] == 2 * H


def matmul(a, b, low=None, **options):
    """tf.matmul(a, b); with ``low`` (tf.bfloat16) of a and b cast to it, the result back in a's dtype."""
    if low is None:
        return tf.matmul(a, b, **options)
    return tf.cast(tf.matmul(tf.cast(a, low), tf.cast(b, low), **options), a.dtype)


def masked_product(s, mh, R_k, H, low=None):
    """[s * m_H] R_H | [s * m_T] R_T: one product for H and T when they share the mask."""
    if _split(mh, H):
        return tf.concat([matmul(s * mh[:, :H], R_k[:, :H], low), matmul(s * mh[:, H:], R_k[:, H:], low)], 1)
    return matmul(s if mh is None else s * mh, R_k, low)


def masked_product_grad(d, mh, R_k, H, low=None):
    """Gradient of ``masked_product`` with respect to s, given d = dJ/d(its output)."""
    if _split(mh, H):
        return (
            matmul(d[:, :H], R_k[:, :H], low, transpose_b=True) * mh[:, :H]
            + matmul(d[:, H:], R_k[:, H:], low, transpose_b=True) * mh[:, H:]
        )
    g = matmul(d, R_k, low, transpose_b=True)
    return g if mh is None else g * mh


def weight_grad(S_k, D_k, mh, H, low=None):
    """dJ/dR_k from the states entering micro-layer k (T x B x H) and their d (T x B x 2H)."""

    def product(a, d):
        return matmul(tf.reshape(a, [-1, H]), tf.reshape(d, [-1, d.shape[-1]]), low, transpose_a=True)

    if _split(mh, H):
        return tf.concat([product(S_k * mh[:, :H], D_k[..., :H]), product(S_k * mh[:, H:], D_k[..., H:])], 1)
    return product(S_k if mh is None else S_k * mh, D_k)


def micro_steps(px_t, s, mh, R, b):
    """One time step: D micro-layers from state ``s`` (B x H); ``px_t`` (B x 2H) is
    micro-layer 0's input projection with its bias; R, b are lists over micro-layers."""
    H = s.shape[-1]
    for k in range(len(R)):
        # H and T of a micro-layer in one product; only micro-layer 0 sees the input.
        pre = masked_product(s, mh, R[k], H) + (px_t if k == 0 else b[k])
        h, t = tf.tanh(pre[:, :H]), tf.sigmoid(pre[:, H:])
        s = s + t * (h - s)  # carry path uses the undropped state
    return s


def recurrence(px, s0, mh, R, b, low=None):
    """All time steps of one layer: px B x T x 2H -> (outputs B x T x H, final state B x H);
    products in ``low`` (None: px's dtype; tf.bfloat16: R cast once, results float32).

    Loops are ``tf.while_loop`` (any T in one traced graph; the final B = 1 pass uses
    T = 1000). The gradient is written by hand, as in the PyTorch backend: the backward
    loop carries only the state gradient, the gate derivatives are computed for all
    micro-steps at once, and dR, db are one large product per micro-layer.
    """
    H, D = s0.shape[-1], R.shape[0]

    @tf.custom_gradient
    def run(px, s0, R, b):
        Rs, bs = tf.unstack(R if low is None else tf.cast(R, low)), tf.unstack(b)
        steps = tf.transpose(px, [1, 0, 2])
        T = tf.shape(steps)[0]
        N = T * D

        def step(t, s, S, A, outputs):
            for k in range(D):
                S = S.write(t * D + k, s)  # the state entering micro-step t * D + k
                pre = masked_product(s, mh, Rs[k], H, low) + (steps[t] if k == 0 else bs[k])
                h, g = tf.tanh(pre[:, :H]), tf.sigmoid(pre[:, H:])
                A = A.write(t * D + k, tf.concat([h, g], 1))
                s = s + g * (h - s)  # carry path uses the undropped state
            return t + 1, s, S, A, outputs.write(t, s)

        arrays = [tf.TensorArray(px.dtype, size=n) for n in (N, N, T)]
        _, s, S, A, outputs = tf.while_loop(
            lambda t, *_: t < T, step, (0, s0, *arrays), maximum_iterations=T
        )  # XLA (jit_compile) needs the bound
        S, A = S.stack(), A.stack()

        def grad(d_out, d_final):
            d_out = tf.zeros_like(outputs_bt) if d_out is None else d_out  # an unused output
            d_final = tf.zeros_like(s) if d_final is None else d_final
            h, g = A[..., :H], A[..., H:]
            P = tf.concat([g * (1 - h * h), (h - S) * g * (1 - g)], -1)  # d pre = P * [ds, ds]
            carry = 1 - g
            d_steps = tf.transpose(d_out, [1, 0, 2])

            def back(t, ds, d_pre):
                ds = ds + d_steps[t]
                for k in reversed(range(D)):
                    i = t * D + k
                    d = P[i] * tf.concat([ds, ds], 1)
                    d_pre = d_pre.write(i, d)
                    ds = masked_product_grad(d, mh, Rs[k], H, low) + ds * carry[i]
                return t - 1, ds, d_pre

            _, ds, d_pre = tf.while_loop(
                lambda t, *_: t >= 0, back, (T - 1, d_final, tf.TensorArray(px.dtype, size=N)), maximum_iterations=T
            )
            d_pre = tf.reshape(d_pre.stack(), [T, D, -1, 2 * H])
            S_k = tf.reshape(S, [T, D, -1, H])
            dR = tf.stack([weight_grad(S_k[:, k], d_pre[:, k], mh, H, low) for k in range(D)])
            db = tf.stack([tf.zeros([2 * H], px.dtype)] + [tf.reduce_sum(d_pre[:, k], [0, 1]) for k in range(1, D)])
            return tf.transpose(d_pre[:, 0], [1, 0, 2]), ds, dR, db

        outputs_bt = tf.transpose(outputs.stack(), [1, 0, 2])
        return (outputs_bt, s), grad

    return run(px, s0, tf.convert_to_tensor(R), tf.convert_to_tensor(b))


@keras.saving.register_keras_serializable(package="rhn")
class RHNCell(keras.layers.Layer):
    """Recurrent Highway Network cell (Zilly et al. 2017), recurrence depth ``depth``,
    coupled carry gate (c = 1 - t). A Keras 3 RNN cell: ``state_size = units``::

        layer = keras.layers.RNN(RHNCell(256, depth=5), return_sequences=True)
        y = layer(x)                                      # x: B x T x input_size

    Weights (fused as in the PyTorch backend): ``W`` input_size x 2H (micro-layer 0's
    input rows, [H | T]), ``R`` D x H x 2H and ``b`` D x 2H. Initialisation as in the
    paper's code: U(-init_scale, init_scale), T biases = ``init_bias``.
    """

    def __init__(self, units, depth, init_scale=0.04, init_bias=-2.0, **kwargs):
        super().__init__(**kwargs)
        self.units, self.depth, self.init_scale, self.init_bias = units, depth, init_scale, init_bias
        self.state_size = units
        self.output_size = units

    def build(self, input_shape):
        H, D, uniform = self.units, self.depth, keras.initializers.RandomUniform(-self.init_scale, self.init_scale)

        def bias_init(shape, dtype=None):
            values = uniform(shape, dtype=dtype)
            return tf.concat([values[:, :H], tf.fill([D, H], tf.cast(self.init_bias, values.dtype))], axis=1)

        self.W = self.add_weight(shape=(input_shape[-1], 2 * H), initializer=uniform, name="W")
        self.R = self.add_weight(shape=(D, H, 2 * H), initializer=uniform, name="R")
        self.b = self.add_weight(shape=(D, 2 * H), initializer=bias_init, name="b")

    def call(self, inputs, states, training=None):
        s = states[0] if isinstance(states, (list, tuple)) else states
        s = micro_steps(tf.matmul(inputs, self.W) + self.b[0], s, None, tf.unstack(self.R), tf.unstack(self.b))
        return s, [s]

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "depth": self.depth,
            "init_scale": self.init_scale,
            "init_bias": self.init_bias,
        }


@keras.saving.register_keras_serializable(package="rhn")
class RHN(keras.layers.Layer):
    """A stack of ``num_layers`` RHN cells run over whole sequences, with the input
    projection hoisted out of the time loop and optional variational dropout masks:
    ``call(inputs, state=None, input_masks=None, state_masks=None)`` -> (outputs
    B x T x H, state L x B x H), like the PyTorch ``RHN``."""

    def __init__(self, hidden_size, depth, num_layers=1, init_scale=0.04, init_bias=-2.0, **kwargs):
        super().__init__(**kwargs)
        self.hidden_size, self.depth, self.num_layers = hidden_size, depth, num_layers
        self.init_scale, self.init_bias = init_scale, init_bias
        self.cells = [
            RHNCell(hidden_size, depth, init_scale, init_bias, dtype=self.dtype_policy, name=f"cell{l}")
            for l in range(num_layers)
        ]
        self.low = None  # the products' input dtype (tf.bfloat16: precision=bf16); None: the variables'

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_size": self.hidden_size,
            "depth": self.depth,
            "num_layers": self.num_layers,
            "init_scale": self.init_scale,
            "init_bias": self.init_bias,
        }

    def build(self, input_shape):
        for l, cell in enumerate(self.cells):
            cell.build((None, input_shape[-1] if l == 0 else self.hidden_size))

    def call(self, inputs, state=None, input_masks=None, state_masks=None):
        if state is None:
            state = tf.zeros([self.num_layers, tf.shape(inputs)[0], self.hidden_size], dtype=inputs.dtype)
        finals = []
        for l, cell in enumerate(self.cells):
            mi = None if input_masks is None else input_masks[l]
            mh = None if state_masks is None else state_masks[l]
            # The input projection of micro-layer 0 for all T steps (two products when H
            # and T have separate masks, i.e. a mask twice the input width).
            n_in, H = inputs.shape[-1], self.hidden_size
            if mi is not None and mi.shape[-1] == 2 * n_in:
                px = tf.concat(
                    [
                        matmul(inputs * mi[:, None, :n_in], cell.W[:, :H], self.low),
                        matmul(inputs * mi[:, None, n_in:], cell.W[:, H:], self.low),
                    ],
                    -1,
                )
            else:
                px = matmul(inputs if mi is None else inputs * mi[:, None, :], cell.W, self.low)
            inputs, s = recurrence(px + cell.b[0], state[l], mh, cell.R, cell.b, self.low)
            finals.append(s)
        return inputs, tf.stack(finals)


class RHNLanguageModel(keras.layers.Layer):
    """Embedding -> RHN stack -> softmax, with the original's in_size and tying rules."""

    def __init__(self, spec, **kwargs):
        super().__init__(**kwargs)
        self.spec = spec
        self.rhn = RHN(
            spec.hidden_size,
            spec.depth,
            spec.num_layers,
            spec.init_scale,
            spec.init_bias,
            dtype=self.dtype_policy,
            name="rhn",
        )

    def build(self, input_shape=None):
        V, H, zeros = self.spec.vocab_size, self.spec.hidden_size, keras.initializers.Zeros()
        self.embedding = self.add_weight(shape=(V, self.spec.in_size), initializer=zeros, name="embedding")
        self.softmax_w = None if self.spec.tied else self.add_weight(shape=(H, V), initializer=zeros, name="softmax_w")
        self.softmax_b = self.add_weight(shape=(V,), initializer=zeros, name="softmax_b")
        self.rhn.build((None, None, self.spec.in_size))

    def call(self, x, state, masks=None):
        """Logits B x T x V and the final state L x B x H."""
        e = tf.gather(self.embedding, x)
        if masks is not None and masks.x is not None:
            e = e * masks.x[..., None]
        out, state = self.rhn(e, state, masks and masks.i, masks and masks.h)
        if masks is not None and masks.o is not None:
            out = out * masks.o[:, None, :]
        w = tf.transpose(self.embedding) if self.softmax_w is None else self.softmax_w
        low = self.rhn.low
        if low is None:
            logits = tf.tensordot(out, w, 1)
        else:  # bf16 inputs, float32 logits
            logits = tf.cast(tf.tensordot(tf.cast(out, low), tf.cast(w, low), 1), out.dtype)
        return logits + self.softmax_b, state

    def loss(self, x, y, state, masks=None):
        """C = sum_t mean_b NLL (the original's loss scale) and the final state."""
        logits, state = self(x, state, masks)
        nll = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
        return tf.reduce_sum(nll) / tf.cast(tf.shape(x)[0], nll.dtype), state


def fused_name(path):
    """Variable path -> fused-layout name: '.../rhn/cell1/W' -> 'W1', '.../embedding' -> 'embedding'."""
    parent, leaf = path.split("/")[-2:]
    return leaf + parent[len("cell") :] if parent.startswith("cell") else leaf


def pick_device(device):
    # physical, not logical, devices: listing logical ones starts TensorFlow's runtime, after which a
    # MultiWorkerMirroredStrategy can no longer configure its collectives (TF_CONFIG workers)
    if device == "auto":
        return "/GPU:0" if tf.config.list_physical_devices("GPU") else "/CPU:0"
    if device == "cpu" or device.startswith("cuda"):
        return "/CPU:0" if device == "cpu" else "/GPU:" + (device.split(":")[1] if ":" in device else "0")
    raise ValueError(f"unknown device {device!r}")


def check_bf16_cpu():
    """RHNError (one line) unless TensorFlow computes bf16 products fast here: oneDNN (TensorFlow's
    default on x86 Linux) on a CPU with bfloat16 instructions."""
    require_bf16_products("tf")
    if os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1").strip() in ("0", "false", "False"):
        raise RHNError(
            "precision=bf16 with tf runs its products in oneDNN, which TF_ENABLE_ONEDNN_OPTS=0 turns off: "
            "unset it or use precision=float32"
        )


class Backend:
    """The contract the core loop drives (``rhn_core.backends.base``)."""

    name = "tf"
    # rhn_impl and cuda_graphs choose torch's fast paths; here XLA compiles the whole step (jit_compile).
    OPTIONS = {
        "rhn_impl": Option(
            "auto",
            ("auto", "reference"),
            "onednn and triton are the torch backend's: use rhn_impl=auto or reference with tf",
        ),
        "cuda_graphs": Option(True),
        "precision": Option("float32", ("float32", "tf32", "bf16")),
        "replicas": Option(1),
        "jit_compile": Option(True, (True, False)),
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
        precision, replicas, jit_compile = options["precision"], options["replicas"], options["jit_compile"]
        split_cpu(replicas, device)  # first: only possible before TensorFlow's runtime starts
        bf16 = precision == "bf16"
        if bf16:  # a GPU is refused below, once TensorFlow lists its devices
            check_bf16_cpu()
        tf.config.experimental.enable_tensor_float_32_execution(precision == "tf32")  # TF's own default is on
        self.spec, self.weight_decay, self.max_grad_norm = spec, weight_decay, max_grad_norm
        self.threads = cpu_threads(threads)
        try:  # before TensorFlow's first operation, which fixes its thread pools
            tf.config.threading.set_intra_op_parallelism_threads(self.threads)
            tf.config.threading.set_inter_op_parallelism_threads(self.threads)
        except RuntimeError:  # TensorFlow already ran in this process (tests, a notebook): its pools stay
            self.threads = tf.config.threading.get_intra_op_parallelism_threads() or self.threads
        self.device, self.dtype = pick_device(device), tf.as_dtype(dtype)
        # data parallel: the model's variables are mirrored on the strategy's devices (the strategy
        # first: a MultiWorkerMirroredStrategy must exist before anything starts TensorFlow's runtime)
        self.strategy, self.local_replicas = make_strategy(world, replicas, self.device, timeout)
        if self.device.startswith("/GPU") and not tf.config.list_logical_devices("GPU"):
            raise RuntimeError("no GPU visible to TensorFlow")
        if bf16 and self.device.startswith("/GPU"):
            raise RHNError(
                "precision=bf16 with tf runs on CPU: use precision=float32 or tf32 on a GPU, or the torch backend"
            )
        with self.strategy.scope() if self.strategy else tf.device(self.device):
            self.model = RHNLanguageModel(spec, dtype=dtype)
            self.model.build()
            self.model.rhn.low = tf.bfloat16 if bf16 else None
        self.comm = connect(world, self.strategy, self.local_replicas, timeout)
        jit_compile = jit_compile and self.strategy is None  # the strategy's collectives run outside XLA
        # XLA's CPU bf16 dot is not oneDNN's (measured: slower than its float32 one); bf16 runs the graph without it
        jit_compile = jit_compile and not bf16
        self.vars = self.model.trainable_variables
        self.names = [fused_name(v.path) for v in self.vars]
        self.set_params(params)
        # XLA (jit_compile) measured on 2 CPU cores: ptb_sota step 801 -> 724 ms, demo 52 -> 48 ms.
        compile = dict(jit_compile=jit_compile, reduce_retracing=True)
        self._train = tf.function(self._train_step, **compile)
        self._eval = tf.function(self._eval_step, **compile)
        self._grads = tf.function(self._objective_and_grads, **compile)
        self._targets = tf.function(self._target_step, **compile)

    # --- canonical parameters -------------------------------------------------
    def get_params(self):
        return unfuse({n: v.numpy() for n, v in zip(self.names, self.vars)}, self.spec)

    def set_params(self, params):
        check_params(params, self.spec, "parameters")
        fused = fuse(params, self.spec)
        for name, v in zip(self.names, self.vars):
            v.assign(tf.constant(fused[name], dtype=self.dtype))

    # --- state and data -------------------------------------------------------
    def zero_state(self, batch_size):
        with tf.device(self.device):
            return tf.zeros([self.spec.num_layers, batch_size, self.spec.hidden_size], dtype=self.dtype)

    def state_to_numpy(self, state):
        return list(state.numpy())

    def state_from_numpy(self, arrays):
        with tf.device(self.device):
            return tf.constant(np.stack(arrays), dtype=self.dtype)

    def _masks(self, masks):
        if masks is None:
            return None
        as_t = lambda a: None if a is None else tf.constant(a, dtype=self.dtype)
        many = lambda seq: None if seq is None else [as_t(a) for a in seq]
        return type(masks)(as_t(masks.x), many(masks.i), many(masks.h), as_t(masks.o))

    def to_numpy(self, values):
        """Stack device scalars and read them back in one transfer."""
        return tf.stack(list(values)).numpy().astype(np.float64)

    # --- steps ------------------------------------------------------------------
    def _objective_and_grads(self, x, y, masks, state):
        with tf.GradientTape() as tape:
            loss, state = self.model.loss(x, y, state, masks)
        grads = tape.gradient(loss, self.vars)
        l2 = 0.5 * self.weight_decay * tf.add_n([tf.reduce_sum(tf.square(v)) for v in self.vars])
        # d/dtheta of weight_decay/2 * theta^2, added before clipping as in the original.
        grads = [tf.convert_to_tensor(g) + self.weight_decay * v for g, v in zip(grads, self.vars)]
        return loss + l2, grads, state

    def _replica_grads(self, x, y, masks, state):
        """In one replica: its share of the rows, then the replicas' average (loss and gradients)."""
        ctx = tf.distribute.get_replica_context()
        b = x.shape[0] // self.local_replicas
        first = (ctx.replica_id_in_sync_group % self.local_replicas) * b
        take = lambda a: None if a is None else a[first : first + b]
        many = lambda seq: None if seq is None else [take(a) for a in seq]
        mine = Masks(take(masks.x), many(masks.i), many(masks.h), take(masks.o))
        objective, grads, state = self._objective_and_grads(take(x), take(y), mine, state[:, first : first + b])
        objective, *grads = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, [objective, *grads])
        return objective, grads, state

    def _train_step(self, x, y, masks, state, lr):
        if self.strategy is None:
            objective, grads, state = self._objective_and_grads(x, y, masks, state)
        else:  # every replica holds the same averaged values: take the first's
            objective, grads, states = self.strategy.run(self._replica_grads, args=(x, y, masks, state))
            local = self.strategy.experimental_local_results
            objective, grads = local(objective)[0], [local(g)[0] for g in grads]
            state = tf.concat(local(states), axis=1)
        norm = tf.linalg.global_norm(grads)
        scale = self.max_grad_norm / tf.maximum(norm, tf.cast(self.max_grad_norm, norm.dtype))
        for v, g in zip(self.vars, grads):
            v.assign_sub(lr * scale * g)
        return objective, state

    def _eval_step(self, x, y, state):
        return self.model.loss(x, y, state)

    def _target_step(self, x, y, masks, state):
        logits, state = self.model(x, state, masks)
        return -tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits), state

    def _args(self, x, y):
        return tf.constant(x, dtype=tf.int64), tf.constant(y, dtype=tf.int64)

    def train_step(self, x, y, masks, state, lr):
        """One SGD step on J, clipped to max_grad_norm (global norm); no host sync."""
        with tf.device(self.device):
            return self._train(*self._args(x, y), self._masks(masks), state, tf.constant(lr, dtype=self.dtype))

    def eval_step(self, x, y, state):
        with tf.device(self.device):
            return self._eval(*self._args(x, y), state)

    def log_probs(self, x, state, masks=None):
        """Log-probabilities (B x T x V) and the final state, as NumPy (tests, MC evaluation)."""
        with tf.device(self.device):
            logits, state = self.model(tf.constant(x, dtype=tf.int64), state, self._masks(masks))
            return tf.nn.log_softmax(logits).numpy(), self.state_to_numpy(state)

    def target_log_probs(self, x, y, state, masks=None):
        """log p(y) at every position (B x T, NumPy) with ``masks`` applied, and the state."""
        with tf.device(self.device):
            lp, state = self._targets(*self._args(x, y), self._masks(masks), state)
            return lp.numpy().astype(np.float64), state

    def gradients(self, x, y, masks, state):
        with tf.device(self.device):
            objective, grads, _ = self._grads(*self._args(x, y), self._masks(masks), state)
        return float(objective), unfuse({n: g.numpy() for n, g in zip(self.names, grads)}, self.spec)
