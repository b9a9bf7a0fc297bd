"""What every command shares (train, evaluate, evaluate_mc, sample): the data and the model spec of a
config, the backend, a checkpoint loaded for scoring, the perplexity and its bits, and the Ctrl-C handling.

``rhn_core.loop`` (training and evaluation), ``rhn_core.mc`` (MC dropout) and ``rhn_core.sample``
(text) are built on these; none of them imports another's internals. Nothing here knows about
experiment tracking (``rhn_core.tracking``): Sacred's run is handed in by the experiment.
"""

import math
import signal
import threading

from .backends import load_backend
from .backends.base import OPTION_KEYS
from .checkpoint import load_checkpoint
from .data import readers
from .distributed import World, check_batch
from .errors import RHNError
from .hyperparams import check_config
from .params import check_params, spec_from_config
from .runlock import note_writer


class Stop(Exception):
    """Ctrl-C (or a scheduler's signal) was seen between two steps: the command saves what it can and stops."""


class Abort(KeyboardInterrupt):
    """A second Ctrl-C: stop now, without waiting for the step or the checkpoint being written."""


def _say(text):
    """A line from a signal handler: never an exception there, whatever happened to the output."""
    try:
        print(text, flush=True)
    except (OSError, ValueError):
        pass


class InterruptFlag:
    """First Ctrl-C (or SIGTERM, SIGHUP when the terminal or SSH session closes, or Slurm's pre-timeout
    SIGUSR2): finish the step, save, stop. A second Ctrl-C aborts at once (``Abort``); a scheduler's
    further signals (Slurm may send SIGTERM and SIGUSR2 to every process of a job) are ignored, so they
    cannot cut the checkpoint short."""

    SIGNALS = tuple(
        getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR2") if hasattr(signal, name)
    )

    def __init__(self, vote=bool):
        self.requested = False
        self.signum = signal.SIGINT  # the first signal seen: the exit status is 128 + its number
        self.vote = vote  # data parallel: the ranks' agreement, so all stop after the same step
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested:
            if signum == signal.SIGINT:
                raise Abort
            return
        self.requested, self.signum = True, signum
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        _say(f"\n{name}: stopping after this step and saving a checkpoint (Ctrl-C again aborts)")

    def check(self):
        if self.vote(self.requested):
            raise Stop


def perplexity(costs, iters):
    """exp(mean NLL); inf for no tokens or a mean beyond a float's range (a diverged run), never an exception."""
    if not iters or not math.isfinite(costs):
        return math.inf if costs == costs else math.nan
    try:
        return math.exp(costs / iters)
    except OverflowError:
        return math.inf


def diverged(ppl, vocab_size):
    """Perplexity beyond V^2: V times worse than guessing uniformly (a healthy run starts near V), or not finite."""
    return not ppl < vocab_size**2


def bits(ppl):
    return math.log2(ppl)


def corpus_and_spec(cfg, backend_name=None, world=None):
    """Checked config (and its split over ``world``) -> (corpus, model spec)."""
    check_config(cfg)
    if backend_name:
        check_batch(world or World(), cfg["batch_size"], cfg["replicas"], backend_name)
    corpus = readers.load_corpus(cfg)
    for split, (dropped, total) in corpus.dropped.items():
        if dropped:  # the original dropped them silently, which flatters the perplexity
            print(
                f"Note: {dropped:,} of the {total:,} words of the {split} file ({100 * dropped / total:.2f} %) are "
                f"not in the training vocabulary and are left out, as the original did: they are not scored"
            )
    for split in ("train", "valid", "test"):
        readers.check_batchable(getattr(corpus, split), cfg["batch_size"], cfg["num_steps"], split)
    return corpus, spec_from_config(cfg, corpus.vocab_size)


def make_backend(cfg, backend_name, spec, params, world=None):
    """The backend (``rhn_core.backends.base``); with ``world`` of several processes it joins their group."""
    module = load_backend(backend_name)
    try:
        return module.Backend(
            spec,
            params,
            cfg["weight_decay"],
            cfg["max_grad_norm"],
            cfg["device"],
            cfg["dtype"],
            threads=cfg["threads"],
            world=world,
            timeout=cfg["dist_timeout"],
            options={key: cfg[key] for key in OPTION_KEYS},
        )
    except (RuntimeError, AssertionError, ValueError) as e:  # e.g. device='cuda' on a machine without one
        raise RHNError(
            f"{backend_name} backend cannot start on device={cfg['device']!r}: "
            f"{str(e).splitlines()[0]}; use device=cpu or device=auto"
        )


def load_for_evaluation(cfg, backend_name, command, reading=None):
    """(corpus, spec, backend holding the weights of ``load_model``): the start of evaluate, evaluate_mc and
    sample. The data is read first (its vocabulary gives the spec), so a checkpoint of another model is
    refused by name; ``reading`` (e.g. "scoring") names what is done with a checkpoint a running
    training is still writing (it may be replaced while being read: the reader is told, not stopped)."""
    path = cfg["load_model"]
    if not path:
        raise RHNError(f"{command} needs load_model=PATH, a checkpoint such as runs/<dataset>_<seed>/best.npz")
    corpus, spec = corpus_and_spec(cfg)
    if reading:
        note_writer(path, reading)
    params, _ = load_checkpoint(path)
    check_params(params, spec, path)
    return corpus, spec, make_backend(cfg, backend_name, spec, params)
