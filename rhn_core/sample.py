"""Text written by a trained model: the ``sample`` command, and the sample that ends a run.

The model reads the prime text (state from zeros), then draws one symbol at a time
from its own prediction, divided by ``temperature`` in log space, and reads it back
in. Words for PTB (``<eos>`` is a line break), bytes for the character models.
Drawing happens on the host, with NumPy, from the log-probabilities the backend
returns: the random stream is the same for every backend, so the same checkpoint
and seed give the same text from either (exactly so in float64; in float32 a draw
that falls within rounding of a boundary between two symbols may differ).
"""

import numpy as np

from .errors import RHNError
from .runtime import load_for_evaluation

EOS = "<eos>"


def encode(corpus, text):
    """Ids of the prime ``text``; '' is the start of a sentence (PTB) or of a line (bytes)."""
    if corpus.unit == "word":
        index = {word: i for i, word in enumerate(corpus.symbols)}
        words = text.replace("\n", f" {EOS} ").split() or [EOS]
        unknown = [w for w in words if w not in index]
        if unknown and "<unk>" not in index:
            raise RHNError(f"sample_prime has words the model does not know: {' '.join(unknown[:5])}")
        return np.array([index.get(w, index.get("<unk>")) for w in words], dtype=np.int64)
    values = [int(v) for v in corpus.symbols]
    index = {v: i for i, v in enumerate(values)}
    data = text.encode("utf-8") or bytes([next((v for v in b"\n " if v in index), values[0])])
    missing = sorted({c for c in text if any(b not in index for b in c.encode("utf-8"))})
    if missing:
        raise RHNError(
            f"sample_prime has characters that never occur in the training text: {' '.join(map(repr, missing))}"
        )
    return np.array([index[b] for b in data], dtype=np.int64)


def decode(corpus, ids):
    """The text of ``ids``."""
    if corpus.unit == "char":
        return bytes(np.asarray(corpus.symbols)[np.asarray(ids, dtype=np.int64)]).decode("utf-8", errors="replace")
    text = ""
    for word in (corpus.symbols[i] for i in ids):
        text += "\n" if word == EOS else ("" if not text or text.endswith("\n") else " ") + word
    return text


def generate(backend, prime, length, temperature, rng):
    """``length`` ids drawn after reading ``prime`` (ids), one symbol at a time (B = 1)."""
    log_probs, state = backend.log_probs(np.asarray(prime)[None, :], backend.zero_state(1))
    out = []
    for _ in range(length):
        scaled = log_probs[0, -1].astype(np.float64) / temperature
        p = np.exp(scaled - scaled.max())
        out.append(int(rng.choice(len(p), p=p / p.sum())))
        log_probs, state = backend.log_probs(np.array([[out[-1]]]), backend.state_from_numpy(state))
    return out


def write_sample(cfg, backend, corpus, run):
    """Print and record (``run.info['sample']``, the exact bytes) a sample of the model ``backend`` holds."""
    prime = encode(corpus, cfg["sample_prime"])
    ids = generate(backend, prime, cfg["sample_length"], cfg["temperature"], np.random.default_rng(cfg["seed"]))
    text = decode(corpus, list(prime) + ids if cfg["sample_prime"] else ids)  # PTB: unknown words read <unk>
    print(f"Sample ({cfg['sample_length']} {corpus.unit}s, temperature {cfg['temperature']}, seed {cfg['seed']}):")
    print(text.replace("\r\n", "\n").replace("\r", "\n"))  # CRLF texts (the demo's): no carriage returns in logs
    run.info["sample"] = text
    return text


def sample(cfg, backend_name, run):
    """Sacred ``sample``: text from ``load_model`` (the data is read for its vocabulary)."""
    corpus, _, backend = load_for_evaluation(cfg, backend_name, "sample", reading="sampling from")
    return write_sample(cfg, backend, corpus, run)
