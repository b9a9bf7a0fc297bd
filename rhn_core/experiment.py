"""The Sacred experiment, built the same way for every backend.

Every entry point (``rhn_train_torch.py``, ``rhn_train_tf.py``, ``python -m rhn_core BACKEND``) calls
``make_experiment`` with its backend's name, so they register the same config
scope, the same named configs and the same commands. The entry script is the
experiment's main file: its docstring opens ``--help``, which then lists the
named configs, one line each; Sacred stores it with every project source file the
run executes (the package's modules and the backend's).

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
from sacred.dependencies import PackageDependency, gather_sources_and_dependencies
import importlib.metadata
import importlib.util
import io
import json
import re
import signal
import sys

from sacred.utils import apply_backspaces_and_linefeeds

from . import loop, mc, sample as sampling
from .progress import STDOUT_IS_TERMINAL
from .backends import BACKENDS
from .distributed import detect
from .errors import RHNError, TrainingInterrupted
from .output import guard_std_streams
from .hyperparams import NAMED_CONFIGS, check_value, hyperparameters
from .tracking.credentials import check_run_inputs
from .tracking.mongo import parse_target
from .tracking.remote import resolve as resolve_resume


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


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_PADDING = re.compile(r"^ {20,}")  # no real output line starts with 20 spaces


def clean_output(text):
    """What observers store of the output: progress bars only in their final state, no blank lines
    left by cleared bars, no colour codes. Idempotent (Sacred applies it to the whole text each time)."""
    lines = _ANSI.sub("", apply_backspaces_and_linefeeds(text)).split("\n")
    # A cleared bar (spaces) can share a line with a print from the other stream: drop the padding.
    kept = [_PADDING.sub("", line.rstrip()) for line in lines[:-1]]
    return "\n".join([line for line in kept if line] + lines[-1:])


PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(PACKAGE_DIR)  # the repository: stored source names read rhn_core/loop.py, rhn_train_torch.py


def project_sources(backend_name):
    """The package's files a run of ``backend_name`` executes: every loaded module of ``rhn_core``
    and the backend's (imported later, during the run; located here without importing it)."""
    files = {getattr(module, "__file__", None) for module in list(sys.modules.values())}
    files = {f for f in files if f and f.endswith(".py") and os.path.abspath(f).startswith(PACKAGE_DIR + os.sep)}
    return sorted(files | {importlib.util.find_spec(BACKENDS[backend_name].module).origin})


def describe_named_configs():
    """One line per named config (its docstring), for ``--help``."""
    width = max(map(len, NAMED_CONFIGS))
    lines = [
        f"  {name:{width}}  {(scope.__doc__ or '').strip().splitlines()[0]}" for name, scope in NAMED_CONFIGS.items()
    ]
    return "Named configs (with NAME, then KEY=VALUE to change any key):\n" + "\n".join(lines)


class RHNExperiment(Experiment):
    """Sacred's Experiment with the observers of ``rhn_core.tracking.observer`` behind ``-m`` and ``-F``.

    In a data-parallel job only rank 0 gets observers (one run per job) and shows Sacred's log."""

    backend_name = "torch"
    invocation = None  # how the user started it, when not a script (python -m rhn_core BACKEND)

    def get_usage(self, program_name=None):
        # Sacred shows the script's path relative to base_dir; a user typed its name.
        name = self.invocation or os.path.basename(program_name or sys.argv[0])
        return super().get_usage(os.path.join(self.base_dir, name))

    def run_commandline(self, argv=None):
        """Sacred's command line, with printing that cannot stop a run and the documented exit statuses:
        0 done, 1 error (one line), 128 + signal number when a signal stopped it (130 Ctrl-C, 143 SIGTERM,
        129 SIGHUP; the line names the checkpoint on disk)."""
        guard_std_streams()
        TrainingInterrupted.last_exit_status = None  # only this command's interruption counts
        try:
            return super().run_commandline(argv)
        except SystemExit as e:
            if e.code == 1 and TrainingInterrupted.last_exit_status:
                raise SystemExit(TrainingInterrupted.last_exit_status)
            raise
        except KeyboardInterrupt:  # Ctrl-C outside training (reading data, evaluate, sample): nothing to save
            print("Interrupted (Ctrl-C): stopped; no checkpoint was being written", file=sys.stderr, flush=True)
            raise SystemExit(128 + signal.SIGINT)

    def _create_run(
        self, command_name=None, config_updates=None, named_configs=(), info=None, meta_info=None, options=None
    ):
        from .tracking.observer import FileObserver, MongoRunObserver

        for path in project_sources(self.backend_name):
            self.add_source_file(path)
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
        if (config_updates or {}).get("seed") is not None:  # Sacred asserts on a bad seed before our checks
            check_value("seed", config_updates["seed"])
        run = super()._create_run(command_name, config_updates, named_configs, info, meta_info, options)
        # Before any observer is attached or started: a password in the config or command line is refused.
        check_run_inputs(run.config, run.meta_info)
        # Sacred warns "No observers have been added to this run" on every plain run; -m and -F are in --help.
        run.warn_if_unobserved = lambda: None
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
        raise RHNError(
            f"--sweep={text!r} is not a JSON object with name, key and values: let python -m rhn_core.sweep set it"
        )
    return sweep


@contextlib.contextmanager
def chief_output(backend_name):
    """Only rank 0 of a data-parallel job prints (errors, on stderr, still show on every rank)."""
    if detect(backend_name).chief:
        yield
        return
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        yield


ANSI_CODE = re.compile(r"\x1b\[[0-9;]*m")


def print_run_config(_run):
    """Sacred's config listing; in colour at a terminal, plain text in a log file (no escape codes)."""
    if STDOUT_IS_TERMINAL:
        print_config(_run)
        return
    listing = io.StringIO()
    with contextlib.redirect_stdout(listing):
        print_config(_run)
    print(ANSI_CODE.sub("", listing.getvalue()), end="")


def make_experiment(backend_name, main_globals=None):
    """Experiment ``rhn_prediction`` (the original's name) driving ``backend_name``.

    ``main_globals``: those of the entry script (default: the caller's), whose file Sacred
    stores as the main file and whose docstring opens ``--help``.
    """
    main_globals = main_globals if main_globals is not None else sys._getframe(1).f_globals
    ex = RHNExperiment(
        "rhn_prediction",
        base_dir=ROOT,
        save_git_info=False,
        additional_cli_options=[mongo_fallback_option, sweep_option],
    )
    ex.backend_name = backend_name
    # Sacred took this module for the main file (it is the caller of Experiment()): use the entry script.
    ex.mainfile, ex.sources, ex.dependencies = gather_sources_and_dependencies(main_globals, False, ROOT)
    ex.doc = (main_globals.get("__doc__") or "").strip() + "\n\n" + describe_named_configs()
    # Progress bars redraw with carriage returns: the stored output keeps one line per bar at most,
    # so a run's document stays far below MongoDB's 16 MB whatever its length (tested).
    ex.captured_out_filter = clean_output
    # Sacred records the packages the main file imports; the framework is imported later, by the
    # backend, so its version is declared here (read from the installed metadata: no import).
    # Added directly: Sacred's add_package_dependency refuses local versions such as 2.13.0+cpu.
    for dist in ("rhn", "pymongo", *BACKENDS[backend_name].distributions):
        try:
            ex.dependencies.add(PackageDependency(dist, importlib.metadata.version(dist)))
        except importlib.metadata.PackageNotFoundError:
            pass
    ex.config(hyperparameters)
    for name, scope in NAMED_CONFIGS.items():
        ex.add_named_config(name, scope) if isinstance(scope, dict) else ex.named_config(scope)
        ex.named_configs[name].__doc__ = scope.__doc__  # print_named_configs shows it

    @ex.main
    def main(_config, _run):
        """Train, select the best epoch on validation, evaluate it on the full streams."""
        with chief_output(backend_name):
            # resume=ADDRESS#ID or #ID (a run in MongoDB) is resolved here, before the loop: the loop gets
            # only the download, which it calls once it holds its folder (the files land in <run_dir>/fetched)
            fetch_resume = resolve_resume(_config["resume"], _run)
            # bad config, data or checkpoint fail here
            trainer = loop.Trainer(_config, backend_name, _run, fetch_resume)
            print_run_config(_run)  # as the original's main does first
            result = trainer.train()
            if _config["sample_at_end"]:  # the backend holds the best epoch's weights now
                sampling.write_sample(_config, trainer.backend, trainer.corpus, _run)
                print(
                    f"Write more: {ex.invocation or os.path.basename(sys.argv[0])} sample with <the same config> "
                    f"load_model={trainer.path('best.npz')} [sample_prime=TEXT temperature=T seed=N]"
                )
            return result

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

    @ex.command
    def sample(_config, _run):
        """Text written by load_model: sample_length symbols after sample_prime, at temperature."""
        return sampling.sample(_config, backend_name, _run)

    return ex
