"""What the benchmarks share (torch only): timing of steps, and the LSTM baseline, a
torch.nn.LSTM language model (cuDNN on a GPU) with about as many parameters as the RHN."""

import time

import torch
from torch import nn
from torch.nn import functional as F


def time_steps(step, warmup, steps, sync):
    """Seconds per call of ``step`` after ``warmup`` calls; ``sync`` waits for the device."""
    for _ in range(warmup):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - start) / steps


class LSTMLanguageModel(nn.Module):
    """Embedding -> ``num_layers`` torch.nn.LSTM layers -> softmax, tied when the RHN is."""

    def __init__(self, vocab_size, hidden_size, tied, num_layers=1):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, hidden_size)
        self.lstm = nn.LSTM(hidden_size, hidden_size, num_layers=num_layers, batch_first=True)
        self.softmax_w = None if tied else nn.Parameter(torch.empty(hidden_size, vocab_size))
        self.softmax_b = nn.Parameter(torch.zeros(vocab_size))
        for p in self.parameters():
            nn.init.uniform_(p, -0.04, 0.04)

    def forward(self, x, state):
        out, state = self.lstm(self.embedding(x), state)
        w = self.embedding.weight.t() if self.softmax_w is None else self.softmax_w
        return torch.matmul(out, w) + self.softmax_b, state


def lstm_params(V, H, tied, num_layers=1):
    return V * H + num_layers * 4 * (2 * H * H + 2 * H) + (0 if tied else H * V) + V


def matching_lstm_size(target, V, tied, num_layers=1):
    """Hidden size of the LSTM whose parameter count is closest to ``target``."""
    return min(range(8, 4096), key=lambda h: abs(lstm_params(V, h, tied, num_layers) - target))


def lstm_step(
    V, B, T, tied, n_params, device, dtype, weight_decay, lr, max_grad_norm, num_layers=1, precision="float32"
):
    """(step function, parameter count, hidden size): the same clipped SGD step as the RHN's;
    ``precision=bf16``: the forward pass (and so its products' gradients) under bf16 autocast."""
    H = matching_lstm_size(n_params, V, tied, num_layers)
    model = LSTMLanguageModel(V, H, tied, num_layers).to(device, dtype)
    params = list(model.parameters())
    x = torch.randint(0, V, (B, T), device=device)
    y = torch.randint(0, V, (B, T), device=device)
    box = {"state": None}

    def step():
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits, state = model(x, box["state"])
        loss = F.cross_entropy(logits.float().reshape(-1, V), y.reshape(-1), reduction="sum") / B
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            grads = torch._foreach_add(grads, params, alpha=weight_decay)
            norm = torch.stack(torch._foreach_norm(grads)).norm()
            torch._foreach_mul_(grads, -lr * max_grad_norm / torch.clamp(norm, min=max_grad_norm))
            torch._foreach_add_(params, grads)
        box["state"] = tuple(s.detach() for s in state)
        return loss.detach()

    return step, sum(p.numel() for p in params), H
