"""The Sacred experiment, built the same way for every backend.

Both entry points (``rhn_train_torch.py``, ``rhn_train_tf.py``) call
``make_experiment`` with their backend's name, so they register the same config
scope, the same named configs and the same commands.

``-m`` and ``-F`` keep their Sacred meaning but get the observers of
``rhn_core.tracking.observer``: ``-m`` also takes MongoDB URLs, fails fast when the
server is away (or falls back to files with ``--mongo_fallback=DIR``) and
never loses a run; the password of a URL is redacted from the stored options.
Any other value holding a password (a config key such as ``resume=``, a
command-line option) is refused before the run is created, so no observer
ever sees it.
"""
import contextlib
import os

from sacred import Experiment
from sacred.commandline_options import cli_option
from sacred.commands import print_config
from sacred.dependencies import PackageDependency
import importlib.metadata
import json
import re

from sacred.utils import apply_backspaces_and_linefeeds

from . import loop, mc
from .distributed import detect
from .errors import RHNError
from .hyperparams import NAMED_CONFIGS, hyperparameters
from .tracking.credentials import check_run_inputs
from .tracking.mongo import parse_target


@cli_option("-M", "--mongo_fallback")
def mongo_fallback_option(args, run):
    """With -m: if MongoDB cannot be reached at the start, keep the run in this directory (Sacred's
    file-observer layout) and go on; python -m rhn_core.tracking.upload stores it later. Also where a run is
    kept while the server is lost mid-run (default runs/mongo_unsent)."""
    # Read by RHNExperiment._create_run, which builds the MongoDB observer.


@cli_option("-w", "--sweep")
def sweep_option(args, run):
    """Set by python -m rhn_core.sweep: JSON {name, key, values} of the sweep this run belongs to, stored in
    the run's meta (meta.sweep) from its start, so the sweep and report find and group its runs."""
    # Read by RHNExperiment._create_run, which puts it into the meta information.


FRAMEWORK_DISTRIBUTIONS = {"torch": ("torch",), "tf": ("tensorflow", "tensorflow-cpu", "keras")}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_PADDING = re.compile(r"^ {20,}")  # no real output line starts with 20 spaces


def clean_output(text):
    """What observers store of the output: progress bars only in their final state, no blank lines
    left by cleared bars, no colour codes. Idempotent (Sacred applies it to the whole text each time)."""
    lines = _ANSI.sub("", apply_backspaces_and_linefeeds(text)).split("\n")
    # A cleared bar (spaces) can share a line with a print from the other stream: drop the padding.
    kept = [_PADDING.sub("", line.rstrip()) for line in lines[:-1]]
    return "\n".join([line for line in kept if line] + lines[-1:])


class RHNExperiment(Experiment):
    """Sacred's Experiment with the observers of ``rhn_core.tracking.observer`` behind ``-m`` and ``-F``.

    In a data-parallel job only rank 0 gets observers (one run per job) and shows Sacred's log."""

    backend_name = "torch"

    def _create_run(self, command_name=None, config_updates=None, named_configs=(), info=None,
                    meta_info=None, options=None):
        from .tracking.observer import FileObserver, MongoRunObserver
        options = dict(options or {})
        # Taken out so that Sacred's own options do not build their observers; ours are added below.
        mongo_spec, file_dir = options.pop("--mongo_db", None), options.pop("--file_storage", None)
        fallback = options.get("--mongo_fallback")
        if options.get("--sweep"):
            meta_info = dict(meta_info or {}, sweep=parse_sweep_option(options["--sweep"]))
        target = parse_target(mongo_spec) if mongo_spec else None  # a bad address fails before any work
        if not detect(self.backend_name).chief:
            target = file_dir = None
            options["--loglevel"] = "ERROR"
        run = super()._create_run(command_name, config_updates, named_configs, info, meta_info, options)
        # Before any observer is attached or started: a password in the config or command line is refused.
        check_run_inputs(run.config, run.meta_info)
        if target is not None:
            run.observers.append(MongoRunObserver(target, fallback_dir=fallback))
            run.meta_info["options"]["--mongo_db"] = target.address  # never the password
        if file_dir:
            run.observers.append(FileObserver(file_dir))
            run.meta_info["options"]["--file_storage"] = file_dir
        return run


def parse_sweep_option(text):
    """The --sweep value: a JSON object with the sweep's name, the run's key and its swept values."""
    try:
        sweep = json.loads(text)
    except ValueError:
        sweep = None
    if not isinstance(sweep, dict) or not {"name", "key", "values"} <= set(sweep):
        raise RHNError(f"--sweep={text!r} is not a JSON object with name, key and values: "
                       f"let python -m rhn_core.sweep set it")
    return sweep


@contextlib.contextmanager
def chief_output(backend_name):
    """Only rank 0 of a data-parallel job prints (errors, on stderr, still show on every rank)."""
    if detect(backend_name).chief:
        yield
        return
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        yield


def make_experiment(backend_name):
    """Experiment ``rhn_prediction`` (the original's name) driving ``backend_name``."""
    ex = RHNExperiment("rhn_prediction", save_git_info=False,
                       additional_cli_options=[mongo_fallback_option, sweep_option])
    ex.backend_name = backend_name
    # Progress bars redraw with carriage returns: the stored output keeps one line per bar at most,
    # so a run's document stays far below MongoDB's 16 MB whatever its length (tested).
    ex.captured_out_filter = clean_output
    # Sacred records the packages the main file imports; the framework is imported later, by the
    # backend, so its version is declared here (read from the installed metadata: no import).
    # Added directly: Sacred's add_package_dependency refuses local versions such as 2.13.0+cpu.
    for dist in ("rhn", "pymongo", *FRAMEWORK_DISTRIBUTIONS[backend_name]):
        try:
            ex.dependencies.add(PackageDependency(dist, importlib.metadata.version(dist)))
        except importlib.metadata.PackageNotFoundError:
            pass
    ex.config(hyperparameters)
    for name, scope in NAMED_CONFIGS.items():
        ex.add_named_config(name, scope) if isinstance(scope, dict) else ex.named_config(scope)

    @ex.main
    def main(_config, _run):
        """Train, select the best epoch on validation, evaluate it on the full streams."""
        with chief_output(backend_name):
            trainer = loop.Trainer(_config, backend_name, _run)  # bad config, data or checkpoint fail here
            print_config(_run)  # as the original's main does first
            return trainer.train()

    @ex.command
    def evaluate(_config, _run):
        """Score load_model: batched valid, full (B=1) valid and full test."""
        with chief_output(backend_name):  # under torchrun every rank scores the whole model
            return loop.evaluate(_config, backend_name, _run)

    @ex.command
    def evaluate_mc(_config, _run):
        """MC-dropout test perplexity of load_model with mc_steps accepted samples."""
        with chief_output(backend_name):
            return mc.evaluate_mc(_config, backend_name, _run)

    return ex
