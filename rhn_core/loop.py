"""The training and evaluation loop, written once for every backend.

It owns what the original ``rhn_train.py`` did around the model (docs/faithfulness.md,
training and evaluation): the learning-rate schedule, masks per minibatch, state carried across
minibatches and reset per pass, batched valid/test after every epoch, the best
checkpoint on valid, the final B = 1 pass over valid and test with the best
weights, metrics and ``_run.info``. Additions: resumable checkpoints
(``last.npz``, also written on Ctrl-C), progress bars, and a stop with a clear
message on a NaN/Inf loss. A backend is driven only through the interface
of ``rhn_core.backends.base``.
"""

import json
import math
import os
import signal
import threading
import time
import uuid

import numpy as np

from .data import readers
from .tracking import remote
from .backends import load_backend
from .backends.base import OPTION_KEYS
from .checkpoint import check_writable, load_checkpoint, read_state_entries, remove_stale_temporaries, save_checkpoint
from .distributed import LocalComm, World, check_batch, detect, shard_masks
from .errors import RHNError, TrainingInterrupted
from .hyperparams import check_config, config_changes, lr_at
from .masks import sampler
from .plots import learning_curve
from .params import check_params, count_params, describe, init_params, spec_from_config
from .progress import progress_bar
from .runlock import RunFolder, checkpoints_in, default_base, note_writer, shell_arg


# Training-state entries a resumed run reads (with the logs); "hidden" is there only inside an epoch.
RESUME_STATE = ("epoch", "step", "costs", "iters", "rng", "best_valid", "best_epoch", "batch_size", "num_steps")


class _Stop(Exception):
    """Ctrl-C was seen between two steps."""


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
            raise _Stop


def resume_file(value):
    """``resume=``: a checkpoint, a database reference, or a run's folder (its last.npz)."""
    if value and not remote.is_reference(value) and os.path.isdir(value):
        last = os.path.join(value, "last.npz")
        if not os.path.isfile(last):
            raise RHNError(
                f"resume={value} is a folder without a last.npz: give the last.npz a run wrote "
                f"(it is in the folder its start line names)"
            )
        return last
    return value


def progress_of(state):
    """How far a last.npz got, from its epoch and step entries."""
    epoch, step = int(state["epoch"]), int(state["step"])
    return f"in epoch {epoch} at step {step}" if step else f"{epoch - 1} epoch{'s' if epoch != 2 else ''} done"


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


class Evaluator:
    """Scoring passes (no dropout, state from zeros) over a split."""

    def __init__(self, cfg, backend, corpus, interrupt=None, comm=None):
        self.cfg, self.backend, self.corpus = cfg, backend, corpus
        self.interrupt = interrupt or InterruptFlag()
        self.comm = comm or LocalComm()

    def _run(self, batches, total, batch_size, desc, comm=None):
        state, losses, iters = self.backend.zero_state(batch_size), [], 0
        with progress_bar(
            total=total,
            desc=desc,
            unit=self.corpus.unit,
            unit_scale=True,
            leave=False,
            disable=not self.cfg["progress"],
        ) as bar:
            for x, y in batches:
                loss, state = self.backend.eval_step(x, y, state)
                losses.append(loss * x.shape[0])  # C is a batch mean; undo it to sum NLL
                iters += x.size
                bar.update(x.size)
                self.interrupt.check()
        costs = float(self.backend.to_numpy(losses).sum())
        if comm is not None:  # a pass sharded by rows: the ranks' sums of NLL and of predictions
            costs, iters = comm.sum(np.array([costs, iters]))
        return perplexity(costs, iters)  # inf/nan: the caller says what it means

    def batched(self, split):
        """The original per-epoch pass: B and T of training, full windows only."""
        B, T = self.cfg["batch_size"], self.cfg["num_steps"]
        rows = readers.batch_rows(getattr(self.corpus, split), B)
        n = readers.epoch_size(rows, T)
        rows = rows[self.comm.world.rows(B)]  # this rank's share of the streams
        batches = (readers.minibatch(rows, i, T) for i in range(n))
        return self._run(batches, n * rows.shape[0] * T, rows.shape[0], f"{split} (batched)", self.comm)

    def full(self, split):
        """The final pass: B = 1 over the whole stream, all N - 1 predictions scored.

        One stream cannot be split by rows: every rank runs it whole (the same numbers,
        and no rank waits on another for the length of a pass)."""
        ids = getattr(self.corpus, split)
        batches = readers.stream_windows(ids, self.cfg["full_eval_num_steps"])
        return self._run(batches, len(ids) - 1, 1, f"{split} (full)")


class Trainer:
    """One training run: epochs, checkpoints, metrics (the original ``main``)."""

    def __init__(self, cfg, backend_name, run):
        self.world = detect(backend_name)
        if not self.world.chief:  # only rank 0 shows progress
            cfg = dict(cfg, progress=False)
        self.cfg, self.run, self.backend_name = cfg, run, backend_name
        check_config(cfg)  # before the folder is claimed: a bad value leaves nothing behind
        resume = resume_file(cfg["resume"])
        from_db = remote.is_reference(resume)  # its checkpoints are fetched into <run_dir>/fetched
        resume_dir = os.path.dirname(os.path.abspath(resume)) if resume and not from_db else ""
        # The one writer (rank 0) locks its folder first, before any work: a second run there stops now.
        self.folder = RunFolder.claim(cfg["save_dir"] or resume_dir, default_base(cfg)) if self.world.chief else None
        self.run_dir = self.folder.path if self.folder else cfg["save_dir"] or resume_dir or default_base(cfg)
        try:
            self._start(resume, from_db, resume_dir)
        except BaseException:
            if self.folder:
                self.folder.abandon()
            raise

    def _start(self, resume, from_db, resume_dir):
        cfg, run = self.cfg, self.run
        if not resume:
            self._refuse_foreign(resume_dir, None)
        elif not from_db:
            self._refuse_foreign(resume_dir, read_state_entries(resume, ["run_lineage"]).get("run_lineage", ""))
        self.corpus, self.spec = corpus_and_spec(cfg, self.backend_name, self.world)
        init_seq, mask_seq = np.random.SeedSequence(cfg["seed"]).spawn(2)
        self.rng = np.random.default_rng(mask_seq)
        params = init_params(self.spec, np.random.default_rng(init_seq))
        self.epoch, self.step, self.costs, self.iters, self.hidden = 1, 0, 0.0, 0, None
        self.logs = {"train_perplexity": [math.inf], "valid_perplexity": [math.inf], "test_perplexity": [math.inf]}
        self.best_valid, self.best_epoch = math.inf, 0
        self.lineage = uuid.uuid4().hex  # this run's id in its checkpoints; a resumed run keeps its own
        self.data_fingerprint = readers.fingerprint(self.corpus)
        self._prepare_run_dir()
        if from_db:  # a run in MongoDB: its checkpoints are downloaded; this run saves beside them
            fetched = os.path.join(self.run_dir, "fetched")
            resume = remote.fetch(resume, run, fetched)
            self._refuse_foreign(fetched, read_state_entries(resume, ["run_lineage"]).get("run_lineage", ""))
        if resume:
            params = self._restore(resume)  # a file that is no checkpoint fails before anything is written
        if resume and self.world.chief:  # the one writer; the others get best.npz from it at the end
            self._carry_best_over(os.path.dirname(os.path.abspath(resume)))
            self._check_best(resume)
        self.backend = make_backend(cfg, self.backend_name, self.spec, params, self.world)
        self.comm = self.backend.comm
        self.masks = sampler(cfg, self.spec)
        self.interrupt = InterruptFlag(self.comm.vote)
        self.evaluator = Evaluator(cfg, self.backend, self.corpus, self.interrupt, self.comm)

    def _refuse_foreign(self, own_dir, lineage):
        """A run never replaces another run's checkpoints: a new run (``lineage`` None) needs a folder without
        any; a resumed run may write only over its own (its resume file's folder, or files of its lineage)."""
        if not self.folder or (own_dir and os.path.realpath(own_dir) == os.path.realpath(self.run_dir)):
            return
        found = checkpoints_in(self.run_dir)
        if lineage is not None:
            found = [
                n for n in found if read_state_entries(self.path(n), ["run_lineage"]).get("run_lineage") != lineage
            ]
        if not found:
            return
        last = self.path("last.npz")
        held = read_state_entries(last, ["epoch", "step"]) if "last.npz" in found else {}
        what = ", ".join(f"{name} ({progress_of(held)})" if name == "last.npz" and held else name for name in found)
        advice = (
            f"continue that run with {shell_arg('resume', last)}, or "
            if "last.npz" in found and lineage is None
            else ""
        )
        raise RHNError(
            f"{self.run_dir} holds another run's checkpoints ({what}), which this run would replace: "
            f"{advice}set save_dir= to a new folder, or leave save_dir out (each run then gets a "
            f"fresh folder under runs/)"
        )

    # --- checkpoints ------------------------------------------------------------
    def path(self, name):
        return os.path.join(self.run_dir, name)

    def _train_state(self):
        return {
            "epoch": self.epoch,
            "step": self.step,
            "costs": self.costs,
            "iters": self.iters,
            "rng": self.rng.bit_generator.state,
            "best_valid": self.best_valid,
            "best_epoch": self.best_epoch,
            "backend": self.backend_name,
            "batch_size": self.cfg["batch_size"],
            "num_steps": self.cfg["num_steps"],
            "data_fingerprint": self.data_fingerprint,
            "run_lineage": self.lineage,
            "config": json.dumps(dict(self.cfg), default=str),  # what a resume compares its config with
            **{k: np.array(v) for k, v in self.logs.items()},
            # the global batch's state (a collective), so any number of processes can resume it
            **({"hidden": self.comm.gather_rows(np.stack(self.hidden), 1)} if self.hidden is not None else {}),
        }

    def _prepare_run_dir(self):
        """Writable now, not at the first checkpoint an epoch later; half-written checkpoints of a killed
        run (94 MB each for ptb_sota) removed. Rank 0 only: it is the one writer."""
        if not self.world.chief:
            return
        check_writable(self.run_dir)
        for folder in (self.run_dir, os.path.join(self.run_dir, "fetched")):
            for name in remove_stale_temporaries(folder):
                print(f"Removed {os.path.join(folder, name)}: left by a process that is no longer running")

    def _restore(self, path):
        params, st = load_checkpoint(path)
        if "step" not in st:
            raise RHNError(f"{path} has no training state (a best.npz?): resume from the run's last.npz")
        missing = [k for k in (*RESUME_STATE, *self.logs) if k not in st]
        if missing:
            raise RHNError(
                f"{path} is not a complete training checkpoint: its training state lacks "
                f"{', '.join(missing)}; resume from a last.npz written by a run"
            )
        check_params(params, self.spec, path)
        self._check_data(path, st)
        try:
            self.epoch, self.step = int(st["epoch"]), int(st["step"])
            shape = {k: int(st[k]) for k in ("batch_size", "num_steps")}
            if self.step and shape != {k: self.cfg[k] for k in shape}:
                raise RHNError(
                    f"{path} stopped inside an epoch with batch_size={shape['batch_size']}, "
                    f"num_steps={shape['num_steps']}: resume with those values"
                )
            self.costs, self.iters = float(st["costs"]), int(st["iters"])
            self.rng.bit_generator.state = json.loads(str(st["rng"]))
            self.best_valid, self.best_epoch = float(st["best_valid"]), int(st["best_epoch"])
            self.logs = {k: [float(v) for v in st[k]] for k in self.logs}
            mine = self.world.rows(self.cfg["batch_size"])
            self.hidden = [h[mine] for h in st["hidden"]] if "hidden" in st else None
            self.lineage = str(st["run_lineage"]) if "run_lineage" in st else self.lineage
            stored = json.loads(str(st["config"])) if "config" in st else None
        except (ValueError, TypeError, KeyError, IndexError) as e:
            raise RHNError(
                f"{path} is not a usable training checkpoint: its training state is damaged "
                f"({type(e).__name__}); resume from a last.npz written by a run"
            )
        print(f"Resuming from {path}: epoch {self.epoch}, step {self.step}")
        self._note_changes(path, stored)
        return params

    def _note_changes(self, path, stored):
        """A resumed run whose config differs from its checkpoint's says so, one line a key, and records it."""
        if stored is None:
            print(
                f"Note: {path} does not record its config (written before configs were stored); changes "
                f"of learning_rate, dropout... since then are not checked"
            )
            return
        changes = config_changes(stored, self.cfg)
        given = getattr(getattr(self.run, "config_modifications", None), "modified", None)
        if given is not None and "seed" not in given:  # Sacred drew a new one; the masks go on from the checkpoint
            changes.pop("seed", None)
        for key, (old, new) in changes.items():
            print(f"Changed since the checkpoint: {key} {old!r} -> {new!r}")
        if changes:
            self.run.info["resumed_with_changes"] = {k: list(v) for k, v in changes.items()}

    def _check_data(self, path, st):
        """A checkpoint continues only on the data it was trained on (unless resume_other_data=True)."""
        if "data_fingerprint" not in st:
            print(f"Note: {path} does not record its training data (written before fingerprints); not checked")
        elif str(st["data_fingerprint"]) != self.data_fingerprint:
            if not self.cfg["resume_other_data"]:
                raise RHNError(
                    f"{path} was trained on other data than {self.cfg['data_path']} "
                    f"(data fingerprint {str(st['data_fingerprint'])[:12]}, this data "
                    f"{self.data_fingerprint[:12]}): check dataset and data_path, or set "
                    f"resume_other_data=True to continue on this data anyway"
                )
            print(
                f"Note: {path} was trained on other data; continuing on {self.cfg['data_path']} "
                f"(resume_other_data=True)"
            )

    def _carry_best_over(self, old_dir):
        """A run resumed into another save_dir brings its best.npz along (the final pass needs it)."""
        old, new = os.path.join(old_dir, "best.npz"), self.path("best.npz")
        if os.path.isfile(old) and os.path.abspath(old) != os.path.abspath(new):
            self._write(new, lambda: save_checkpoint(new, *load_checkpoint(old)))

    def _check_best(self, resume):
        """The final pass needs the best epoch's weights: a missing or foreign best.npz fails now, not after training."""
        path = self.path("best.npz")
        if not self.best_epoch:
            return
        if not os.path.isfile(path):
            raise RHNError(
                f"{resume} continues a run whose best epoch ({self.best_epoch}) is kept in its best.npz, "
                f"which is neither beside it nor in {self.run_dir}: put that run's best.npz there "
                f"(the final evaluation needs it)"
            )
        _, st = load_checkpoint(path)
        epoch = int(st["best_epoch"]) if "best_epoch" in st else 0
        valid = float(st["valid_perplexity"]) if "valid_perplexity" in st else math.nan
        # A best.npz of a later epoch than the checkpoint (killed between the two saves) is written again.
        if epoch < self.epoch and (epoch, valid) != (self.best_epoch, self.best_valid):
            raise RHNError(
                f"{path} holds epoch {epoch} (valid {valid:.3f}) but {resume} continues a run whose best "
                f"is epoch {self.best_epoch} (valid {self.best_valid:.3f}): it is another run's best.npz; "
                f"put the matching one there or resume into an empty save_dir"
            )

    def _write(self, path, write):
        """``write()`` the file ``path``; a failure (a full disk...) stops the run in one line, the files on disk whole."""
        try:
            return write()
        except OSError as e:
            last = self.path("last.npz")
            kept = (
                f"the checkpoints already on disk are unchanged: free space and continue with "
                f"{shell_arg('resume', last)}"
                if os.path.isfile(last)
                else "no checkpoint was written yet: free space and start again"
            )
            raise RHNError(f"cannot write {path} ({e.strerror or e}); stopped; {kept}")

    def _save_last(self):
        state = self._train_state()  # every rank takes part; rank 0 writes
        if self.world.chief:
            path = self.path("last.npz")
            self._write(path, lambda: save_checkpoint(path, self.backend.get_params(), state))
            self.run.add_artifact(path, "last.npz")  # observers replace the earlier one

    def _save_best(self, valid):
        if self.world.chief:
            path = self.path("best.npz")
            self._write(
                path,
                lambda: save_checkpoint(
                    path,
                    self.backend.get_params(),
                    {
                        "best_epoch": self.epoch,
                        "valid_perplexity": valid,
                        "data_fingerprint": self.data_fingerprint,
                        "run_lineage": self.lineage,
                    },
                ),
            )
            self.run.add_artifact(path, "best.npz")

    def _save_curve(self):
        """The learning curve so far, as an artifact (written only when an observer will store it)."""
        if self.run.observers and len(self.logs["valid_perplexity"]) > 1:
            path = self.path("learning_curve.png")
            self._write(
                path,
                lambda: learning_curve(
                    self.logs,
                    path,
                    self.corpus.unit,
                    f"{self.cfg['dataset']} depth {self.cfg['depth']} "
                    f"hidden {self.cfg['hidden_size']} ({self.backend_name})",
                ),
            )
            self.run.add_artifact(path, "learning_curve.png")

    def _diverged(self, what):
        """The one-line stop of a diverged run; the weights of this epoch are not saved."""
        last = self.path("last.npz")
        where = (
            f"the last good checkpoint is {last}: lower learning_rate or max_grad_norm and resume from it"
            if os.path.isfile(last)
            else "no checkpoint was written yet: lower learning_rate or max_grad_norm"
        )
        return RHNError(
            f"{what} in epoch {self.epoch} near step {self.step}; stopped without saving these weights; {where}"
        )

    # --- passes -----------------------------------------------------------------
    def _flush(self, pending):
        """Read the pending step losses back (the only sync point of a training pass)."""
        if pending:
            values = self.backend.to_numpy(pending)
            pending.clear()
            if not np.all(np.isfinite(values)):
                raise self._diverged(f"training loss became {values[~np.isfinite(values)][0]}")
            ppl = perplexity(float(values.sum()), len(values) * self.cfg["num_steps"])
            if diverged(ppl, self.corpus.vocab_size):
                raise self._diverged(
                    f"training perplexity became {ppl:.3g} (beyond vocab_size^2 = "
                    f"{self.corpus.vocab_size**2:,}: the run diverged)"
                )
            self.costs += float(values.sum())

    def train_epoch(self, lr):
        B, T = self.cfg["batch_size"], self.cfg["num_steps"]
        rows = readers.batch_rows(self.corpus.train, B)
        n = readers.epoch_size(rows, T)
        log_every = max(1, n // 10)
        mine = self.world.rows(B)  # this rank's rows of the global batch (all of them alone)
        state = (
            self.backend.zero_state(mine.stop - mine.start)
            if self.hidden is None
            else self.backend.state_from_numpy(self.hidden)
        )
        pending = []
        with progress_bar(
            total=n * B * T,
            initial=self.step * B * T,
            desc=f"epoch {self.epoch}",
            unit=self.corpus.unit,
            unit_scale=True,
            leave=False,
            disable=not self.cfg["progress"],
        ) as bar:
            try:
                while self.step < n:
                    x, y = readers.minibatch(rows, self.step, T)
                    masks = self.masks(self.rng, x)  # for the global batch: the same draws as one process
                    objective, state = self.backend.train_step(x[mine], y[mine], shard_masks(masks, mine), state, lr)
                    pending.append(objective)
                    self.step += 1
                    self.iters += T
                    bar.update(B * T)
                    if self.step % log_every == 0:
                        self._flush(pending)
                        bar.set_postfix(ppl=f"{perplexity(self.costs, self.iters):.2f}")
                    self.interrupt.check()
            finally:
                # Whatever ends the pass (done, Ctrl-C), the numbers so far are read back
                # and the carried state kept, so a checkpoint can continue exactly here.
                self._flush(pending)
                self.hidden = self.backend.state_to_numpy(state) if self.step < n else None
        return perplexity(self.costs, self.iters)

    def _log_epoch(self, train, valid, test):
        """The epoch's perplexities into the logs (kept in last.npz), before anything is printed."""
        for split, ppl in (("train", train), ("valid", valid), ("test", test)):
            self.logs[f"{split}_perplexity"].append(ppl)

    def _report_epoch(self, e, train, valid, test, lr, seconds, tokens):
        """Lines and metrics of epoch ``e``, once its checkpoints are on disk."""
        unit = self.corpus.unit
        for split, ppl in (("Train", train), ("Valid", valid), ("Test", test)):
            print(f"Epoch: {e} {split} Perplexity: {ppl:.3f} Bits: {bits(ppl):.3f}")
            self.run.log_scalar(f"{split.lower()}_perplexity", ppl, e)
            self.run.log_scalar(f"{split.lower()}_bits", bits(ppl), e)
        self.run.log_scalar("learning_rate", lr, e)
        self.run.log_scalar("epoch_seconds", seconds, e)
        self.run.log_scalar(f"{unit}s_per_second", tokens / seconds, e)
        print(f"Epoch: {e} took {seconds:.1f} s, {tokens / seconds:,.0f} {unit}s/s (training)")
        self.run.info.update(epoch_nr=e, logs=self.logs)

    # --- the run ----------------------------------------------------------------
    def train(self):
        cfg = self.cfg
        for line in describe(self.spec):
            print(line)
        self.run.info.update(
            nr_parameters=count_params(self.spec), run_dir=os.path.abspath(self.run_dir), world_size=self.world.size
        )
        parallel = (f", {self.world.size} processes ({self.world.launcher})" if self.world.size > 1 else "") + (
            f", {cfg['replicas']} replicas" if cfg["replicas"] > 1 else ""
        )
        print(
            f"Backend: {self.backend_name} on {self.backend.device} ({cfg['dtype']}, "
            f"{self.backend.threads} CPU threads{parallel}); "
            f"checkpoints in {self.run_dir}"
        )
        try:
            with self.interrupt:
                try:
                    while self.epoch <= cfg["max_max_epoch"]:
                        self._epoch()
                    self._save_curve()
                    result = self._final()
                    self.comm.close()
                    return result
                except _Stop:
                    self._stopped()
                except Abort:
                    raise self._aborted("")
        finally:
            if self.folder:
                self.folder.release()

    def _stopped(self):
        """After the step a signal asked for: the checkpoint, then the one line that names it."""
        where = f"in epoch {self.epoch} at step {self.step}"
        try:
            if self.epoch <= self.cfg["max_max_epoch"]:
                self._save_last()
                self._save_curve()
            else:  # the last epoch's last.npz is on disk; resuming runs the final pass
                where = "during the final evaluation"
        except Abort:
            raise self._aborted(" while its checkpoint was being written")
        self.comm.close()
        raise TrainingInterrupted(
            f"stopped {where}; continue with {shell_arg('resume', self.path('last.npz'))}", self.interrupt.signum
        )

    def _aborted(self, when):
        """A second Ctrl-C: what is on disk, in one line (a checkpoint cut short is never left half-written)."""
        last = self.path("last.npz")
        held = read_state_entries(last, ["epoch", "step"]) if self.world.chief else {}
        if held:
            kept = f"{last} on disk is whole ({progress_of(held)}): continue with {shell_arg('resume', last)}"
        else:
            kept = "no checkpoint of this run is on disk yet: start it again"
        return TrainingInterrupted(f"aborted by a second Ctrl-C{when}; {kept}", self.interrupt.signum)

    def _epoch(self):
        lr = lr_at(self.cfg, self.epoch)
        print(f"Epoch: {self.epoch} Learning rate: {lr:.3f}" + (f" (resumed at step {self.step})" if self.step else ""))
        start, step0 = time.time(), self.step
        train = self.train_epoch(lr)
        seconds = max(time.time() - start, 1e-9)
        tokens = (self.step - step0) * self.cfg["batch_size"] * self.cfg["num_steps"]
        valid, test = self.evaluator.batched("valid"), self.evaluator.batched("test")
        for split, ppl in (("train", train), ("valid", valid), ("test", test)):
            if diverged(ppl, self.corpus.vocab_size):  # e.g. valid 2.45e89: never let these weights replace last.npz
                raise self._diverged(
                    f"{split} perplexity became {ppl:.3g} (beyond vocab_size^2 = "
                    f"{self.corpus.vocab_size**2:,}: the run diverged)"
                )
        self._log_epoch(train, valid, test)
        if valid < self.best_valid:  # the best epoch is the one of the lowest VALIDATION perplexity
            self.best_valid, self.best_epoch = valid, self.epoch
            self._save_best(valid)
        e = self.epoch
        self.epoch, self.step, self.costs, self.iters = self.epoch + 1, 0, 0.0, 0
        self._save_last()  # on disk before the epoch's lines: a failing output cannot lose the epoch
        self._report_epoch(e, train, valid, test, lr, seconds, tokens)

    def _final(self):
        # rank 0 wrote best.npz; the others get it from rank 0 (no shared disk needed)
        best = self.comm.broadcast(
            load_checkpoint(self.path("best.npz"))[0] if self.world.chief else self.backend.get_params()
        )
        e, info = self.best_epoch, self.run.info
        print(
            f"Best validation perplexity {self.best_valid:.3f} (bits {bits(self.best_valid):.3f}) at epoch {e}; "
            f"train {self.logs['train_perplexity'][e]:.3f}, test {self.logs['test_perplexity'][e]:.3f}"
        )
        info.update(best_val_epoch=e, best_valid_perplexity=self.best_valid, best_valid_bits=bits(self.best_valid))
        self.backend.set_params(best)
        for split, key in (("valid", "full_best_valid_perplexity"), ("test", "full_test_perplexity")):
            ppl = self.evaluator.full(split)
            print(f"Full {split.capitalize()} Perplexity: {ppl:.3f} Bits: {bits(ppl):.3f}")
            info[key], info[key.replace("perplexity", "bits")] = ppl, bits(ppl)
            self.run.log_scalar(key, ppl, e)
        return self.best_valid


def evaluate(cfg, backend_name, run):
    """Sacred ``evaluate``: batched valid, full valid and full test of ``load_model``."""
    if not cfg["load_model"]:
        raise RHNError("evaluate needs load_model=PATH, a checkpoint such as runs/<dataset>_<seed>/best.npz")
    corpus, spec = corpus_and_spec(cfg)
    note_writer(cfg["load_model"], "scoring")
    params, _ = load_checkpoint(cfg["load_model"])
    check_params(params, spec, cfg["load_model"])
    evaluator = Evaluator(cfg, make_backend(cfg, backend_name, spec, params), corpus)
    results = {
        "valid_perplexity": evaluator.batched("valid"),
        "full_valid_perplexity": evaluator.full("valid"),
        "full_test_perplexity": evaluator.full("test"),
    }
    for key, ppl in results.items():
        if not math.isfinite(ppl):
            raise RHNError(
                f"{key} of {cfg['load_model']} is {ppl}: the weights are broken (a diverged run?); "
                f"evaluate an earlier checkpoint"
            )
    for key, ppl in results.items():
        print(f"{key.replace('_', ' ').capitalize()}: {ppl:.3f} Bits: {bits(ppl):.3f}")
    run.info.update(results)
    return results
