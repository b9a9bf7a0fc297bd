"""The training and evaluation loop, written once for every backend.

It owns what the original ``rhn_train.py`` did around the model (docs/faithfulness.md,
training and evaluation): the learning-rate schedule, masks per minibatch, state carried across
minibatches and reset per pass, batched valid/test after every epoch, the best
checkpoint on valid, the final B = 1 pass over valid and test with the best
weights, metrics and ``_run.info``. Additions: resumable checkpoints
(``last.npz``, also written on Ctrl-C), progress bars, and a stop with a clear
message on a NaN/Inf loss. A backend is driven only through the interface
of ``rhn_core.backends.base``; what every command shares (data, backend, perplexity,
Ctrl-C) is in ``rhn_core.runtime``, the checks of a resumed run in ``rhn_core.resume``.
Nothing here knows about experiment tracking: the experiment hands in Sacred's run, and the
download of a run stored in a database (``fetch_resume``).
"""

import json
import math
import os
import time
import uuid

import numpy as np

from .data import readers
from .checkpoint import check_writable, load_checkpoint, read_state_entries, remove_stale_temporaries, save_checkpoint
from .distributed import LocalComm, detect, shard_masks
from .errors import RHNError, TrainingInterrupted
from .hyperparams import check_config, lr_at
from .masks import sampler
from .plots import learning_curve
from .params import count_params, describe, init_params
from .progress import progress_bar
from .resume import check_best, lineage_of, progress_of, refuse_foreign, restore, resume_file
from .runlock import RunFolder, default_base, shell_arg
from .runtime import (
    Abort,
    InterruptFlag,
    Stop,
    bits,
    corpus_and_spec,
    diverged,
    load_for_evaluation,
    make_backend,
    perplexity,
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
    """One training run: epochs, checkpoints, metrics (the original ``main``).

    ``fetch_resume``: where ``resume=`` names a run stored elsewhere (a database, resolved by the
    experiment), the download of its checkpoints: called with a folder, it writes them there and
    returns the path of the last.npz. This run claims its folder first; the download lands in
    ``<run_dir>/fetched``."""

    def __init__(self, cfg, backend_name, run, fetch_resume=None):
        self.world = detect(backend_name)
        if not self.world.chief:  # only rank 0 shows progress
            cfg = dict(cfg, progress=False)
        self.cfg, self.run, self.backend_name = cfg, run, backend_name
        check_config(cfg)  # before the folder is claimed: a bad value leaves nothing behind
        from_db = fetch_resume is not None  # its checkpoints are fetched into <run_dir>/fetched
        resume = cfg["resume"] if from_db else resume_file(cfg["resume"])
        resume_dir = os.path.dirname(os.path.abspath(resume)) if resume and not from_db else ""
        # The one writer (rank 0) locks its folder first, before any work: a second run there stops now.
        self.folder = RunFolder.claim(cfg["save_dir"] or resume_dir, default_base(cfg)) if self.world.chief else None
        self.run_dir = self.folder.path if self.folder else cfg["save_dir"] or resume_dir or default_base(cfg)
        try:
            self._start(resume, fetch_resume, resume_dir)
        except BaseException:
            if self.folder:
                self.folder.abandon()
            raise

    def _start(self, resume, fetch_resume, resume_dir):
        cfg = self.cfg
        if not resume:
            self._refuse_foreign(resume_dir, None)
        elif not fetch_resume:
            self._refuse_foreign(resume_dir, lineage_of(resume))
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
        if fetch_resume:  # a run stored elsewhere: its checkpoints are downloaded; this run saves beside them
            fetched = os.path.join(self.run_dir, "fetched")
            resume = fetch_resume(fetched)
            self._refuse_foreign(fetched, lineage_of(resume))
        if resume:
            params = self._restore(resume)  # a file that is no checkpoint fails before anything is written
        if resume and self.world.chief:  # the one writer; the others get best.npz from it at the end
            self._carry_best_over(os.path.dirname(os.path.abspath(resume)))
            check_best(self.path("best.npz"), resume, self.run_dir, self.best_epoch, self.best_valid, self.epoch)
        self.backend = make_backend(cfg, self.backend_name, self.spec, params, self.world)
        self.comm = self.backend.comm
        self.masks = sampler(cfg, self.spec)
        self.interrupt = InterruptFlag(self.comm.vote)
        self.evaluator = Evaluator(cfg, self.backend, self.corpus, self.interrupt, self.comm)

    def _refuse_foreign(self, own_dir, lineage):
        """Another run's checkpoints in this run's folder stop it (``rhn_core.resume.refuse_foreign``);
        only the one writer looks."""
        if self.folder:
            refuse_foreign(self.run_dir, own_dir, lineage)

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
        """This run continues the checkpoint ``path`` (``rhn_core.resume.restore``); its weights."""
        r = restore(
            path,
            self.spec,
            self.cfg,
            self.data_fingerprint,
            self.logs,
            self.world.rows(self.cfg["batch_size"]),
            self.run,
        )
        self.epoch, self.step, self.costs, self.iters, self.rng = r.epoch, r.step, r.costs, r.iters, r.rng
        self.best_valid, self.best_epoch, self.logs, self.hidden = r.best_valid, r.best_epoch, r.logs, r.hidden
        self.lineage = self.lineage if r.lineage is None else r.lineage
        return r.params

    def _carry_best_over(self, old_dir):
        """A run resumed into another save_dir brings its best.npz along (the final pass needs it)."""
        old, new = os.path.join(old_dir, "best.npz"), self.path("best.npz")
        if os.path.isfile(old) and os.path.abspath(old) != os.path.abspath(new):
            self._write(new, lambda: save_checkpoint(new, *load_checkpoint(old)))

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
                except Stop:
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
    corpus, _, backend = load_for_evaluation(cfg, backend_name, "evaluate", reading="scoring")
    evaluator = Evaluator(cfg, backend, corpus)
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
