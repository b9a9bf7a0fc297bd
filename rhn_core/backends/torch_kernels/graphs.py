"""Steps on static buffers, captured once in a CUDA graph and replayed.

A training step of ptb_sota launches thousands of small kernels (T x D micro-steps
forward and backward); on a GPU the launch overhead, not the arithmetic, bounds it.
A CUDA graph replays the whole recorded step with one launch. Graphs read and write
fixed addresses, so the step's inputs (ids, masks, state, learning rate) live in
static buffers that each call copies into, and its outputs are copied out.

``StaticStep`` runs the same function on the same static buffers with and without
capture: on a CPU (where there are no graphs) the tests run the uncaptured path and
check it against the plain step, bit for bit.
"""

import torch


class StaticStep:
    """``fn(*tensors) -> tuple of tensors`` on static input buffers shaped like ``example``
    (None entries, e.g. absent masks, stay None).

    ``capture``: record ``fn`` in a CUDA graph (after ``warmup`` eager calls on a side
    stream, which compile kernels and set up cuBLAS). Warm-up calls run the real step,
    so the tensors in ``keep`` (the parameters it updates) are restored afterwards.
    ``pool``: a graph memory pool to share with other captures (None: one of its own).
    """

    def __init__(self, fn, example, capture=False, keep=(), pool=None, warmup=2):
        self.fn = fn
        self.inputs = [None if t is None else t.clone() for t in example]
        self.graph = self.outputs = None
        if capture:
            saved = [t.detach().clone() for t in keep]
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    fn(*self.inputs)
            torch.cuda.current_stream().wait_stream(side)
            with torch.no_grad():
                for t, s in zip(keep, saved):
                    t.copy_(s)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, pool=pool):
                self.outputs = fn(*self.inputs)

    def __call__(self, inputs):
        with torch.no_grad():
            for buffer, t in zip(self.inputs, inputs):
                if buffer is not None:
                    buffer.copy_(t, non_blocking=True)
        if self.graph is None:
            outputs = self.fn(*self.inputs)
        else:
            self.graph.replay()
            outputs = self.outputs
        # copies: the next call overwrites the static outputs, and callers keep losses for later
        return tuple(o.detach().clone() for o in outputs)
