"""Shared fixtures: synthetic corpora in the exact formats, the real PTB (RHN_SHARED_DATA)."""

import os
import random
import signal
import subprocess
import sys
import warnings

# Frameworks first, torch before tensorflow (as Keras' own test setup does, to avoid a crash).
try:
    import torch  # noqa: F401

    # Without a GPU the Triton kernels run in Triton's interpreter on CPU tensors; it reads
    # this variable when triton is imported, so it is set before any test imports it.
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:  # the core's tests still run
    pass
try:  # triton before tensorflow too: the other order aborts (both register the same LLVM options)
    import triton  # noqa: F401
except ImportError:
    pass
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
try:
    import tensorflow  # noqa: F401
except ImportError:
    pass

import numpy as np
import pytest

warnings.filterwarnings("ignore", message="pkg_resources is deprecated")

from rhn_core.runtime import InterruptFlag  # after the frameworks are imported quietly above

SIGNALS_RECEIVED = []  # (signal, test) for each signal that reached this process during an in-process run


def _note_signals_received():
    """No test sends a signal to the test process itself (runs that are signalled are subprocesses), so a
    signal caught by an in-process run came from outside the suite: a Ctrl-C, or someone's ``kill`` or
    ``pkill -f`` that matched this process. Without a run it would end the session; during one, the run's
    handler turns it into a checkpoint and a TrainingInterrupted, and that one test fails while the
    session goes on (a failure that then passes alone). ``process_state_as_before`` stops the session."""
    handle = InterruptFlag._handle

    def noting(self, signum, frame):
        test = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]
        SIGNALS_RECEIVED.append((signal.Signals(signum).name, test))
        return handle(self, signum, frame)

    InterruptFlag._handle = noting


_note_signals_received()


@pytest.fixture(autouse=True)
def process_state_as_before():
    """Every test leaves the process as it found it, so no test depends on the ones before it.

    An in-process run changes process-wide state: Sacred seeds Python's ``random``, NumPy's global
    generator and torch's with the run's seed, and a run without ``seed=`` draws its seed from
    ``random``, so its seed (and every number it computes) was chosen by the test before; a torch
    backend sets torch's thread count (``threads``), which changes the reduction order of the
    float32 products of later tests that call torch directly. Restored here after each test: the
    generators, torch's threads, the environment, the working folder and the run signals' handlers.
    pytest-randomly (the test extra) reseeds ``random`` and NumPy before each test as well, from
    ``--randomly-seed`` and the test's name, so a drawn seed is the same in any order.
    """
    saved = dict(
        random=random.getstate(),
        numpy=np.random.get_state(),
        environ=dict(os.environ),
        cwd=os.getcwd(),
        handlers={s: signal.getsignal(s) for s in InterruptFlag.SIGNALS},  # the signals a run handles
    )
    torch = sys.modules.get("torch")
    if torch is not None:
        saved.update(torch_rng=torch.random.get_rng_state(), torch_threads=torch.get_num_threads())
    yield
    random.setstate(saved["random"])
    np.random.set_state(saved["numpy"])
    if torch is not None:
        torch.random.set_rng_state(saved["torch_rng"])
        if torch.get_num_threads() != saved["torch_threads"]:
            torch.set_num_threads(saved["torch_threads"])
    if dict(os.environ) != saved["environ"]:
        for key in set(os.environ) - set(saved["environ"]):
            del os.environ[key]
        os.environ.update(saved["environ"])
    if os.getcwd() != saved["cwd"]:
        os.chdir(saved["cwd"])
    for s, handler in saved["handlers"].items():
        if signal.getsignal(s) is not handler and handler is not None:
            signal.signal(s, handler)
    if SIGNALS_RECEIVED:
        name, test = SIGNALS_RECEIVED[0]
        pytest.exit(
            f"{name} reached the test process during {test} (from outside the suite: a Ctrl-C, a kill or a "
            f"pkill -f that matched it); the session stops, as it would have without the run's signal handler",
            returncode=pytest.ExitCode.INTERRUPTED,
        )


SHARED_DATA = os.environ.get("RHN_SHARED_DATA", os.path.join(os.path.dirname(__file__), "..", "data"))
PTB_MISSING = (
    "real PTB not found: set RHN_SHARED_DATA to a folder holding ptb.train.txt.xz, ptb.valid.txt.xz and "
    "ptb.test.txt.xz (Mikolov's files, xz-compressed; docs/data.md says where to get them)"
)


def shared_file(name):
    path = os.path.join(SHARED_DATA, name)
    return path if os.path.isfile(path) else None


@pytest.fixture(scope="session")
def ptb_dir():
    """The real PTB (ptb.*.txt.xz in RHN_SHARED_DATA); skipped cleanly where absent."""
    if not all(shared_file(f"ptb.{s}.txt.xz") for s in ("train", "valid", "test")):
        pytest.skip(PTB_MISSING)
    return SHARED_DATA


@pytest.fixture(scope="session")
def synthetic_ptb(tmp_path_factory):
    """PTB-format files (lines of space-separated words) with exactly 10,000 types."""
    root = tmp_path_factory.mktemp("ptb")
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(9999)]  # + <eos> = 10,000
    train = words + list(rng.choice(words[:300], size=3000))
    rng.shuffle(train)

    def write(name, tokens):
        lines = [" ".join(tokens[i : i + 12]) for i in range(0, len(tokens), 12)]
        (root / f"ptb.{name}.txt").write_text("".join(f" {line} \n" for line in lines))

    write("train", train)
    write("valid", list(rng.choice(words[:400], size=1500)))
    write("test", list(rng.choice(words[:400], size=1500)))
    return str(root)


def byte_corpus(path, n_values, size, seed=0):
    """A file of ``size`` bytes using exactly ``n_values`` distinct byte values."""
    rng = np.random.default_rng(seed)
    values = np.sort(rng.choice(256, size=n_values, replace=False)).astype(np.uint8)
    data = np.concatenate([values, values[rng.integers(0, n_values, size - n_values)]])
    path.write_bytes(data.tobytes())
    return values


@pytest.fixture(scope="session")
def synthetic_char_dirs(tmp_path_factory):
    """data folders with an enwik8-like (205 byte values) and a text8-like file (a-z, space)."""
    root = tmp_path_factory.mktemp("chars")
    byte_corpus(root / "enwik8", 205, 6000)
    rng = np.random.default_rng(1)
    letters = np.frombuffer(b" abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
    text = np.concatenate([letters, letters[rng.integers(0, 27, 6000 - 27)]])
    (root / "text8").write_bytes(text.tobytes())
    return str(root)


@pytest.fixture(scope="session")
def small_text(tmp_path_factory):
    """The first 12,000 characters of the embedded demo text, as a plain file."""
    import lzma
    from rhn_core.hyperparams import DEMO_TEXT

    path = tmp_path_factory.mktemp("text") / "alice_head.txt"
    path.write_bytes(lzma.open(DEMO_TEXT).read()[:12000])
    return str(path)


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def backend_params(*names):
    """Parameters over the registered backends (all by default), each skipped where its framework is absent."""
    from rhn_core.backends import BACKENDS, available

    return [
        pytest.param(n, marks=pytest.mark.skipif(not available(n), reason=f"{BACKENDS[n].framework} is not installed"))
        for n in (names or sorted(BACKENDS))
    ]


def native_updates(backend):
    """Config updates a backend needs on top of any config: the numpy backend computes in float64 only."""
    return {"dtype": "float64"} if backend == "numpy" else {}


def entry_argv(backend):
    """How a user starts ``backend``: its script (rhn_train_torch.py) where there is one, else python -m."""
    from rhn_core.backends import BACKENDS

    script = os.path.join(REPO, f"{BACKENDS[backend].entry[0]}.py")
    return [script] if os.path.isfile(script) else ["-m", *BACKENDS[backend].entry]


def entry_env(environ=None):
    """The environment of an entry point run from any folder: the repository importable (python -m)."""
    environ = dict(os.environ if environ is None else environ)
    environ["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, environ.get("PYTHONPATH")) if p)
    return environ


def run_experiment(command="main", named=(), backend="torch", options=None, **updates):
    """Run the experiment in-process through Sacred, as the command line would (``options``: its flags)."""
    from sacred import SETTINGS
    from rhn_core.experiment import make_experiment

    SETTINGS.CAPTURE_MODE = "sys"  # leave file descriptors to pytest
    updates.setdefault("progress", False)
    return make_experiment(backend).run(
        command, config_updates=updates, named_configs=list(named), options={"--loglevel": "ERROR", **(options or {})}
    )


def run_cli(*args, backend="torch", timeout=300, cwd=None):
    """``python rhn_train_<backend>.py ARGS`` (or the backend's ``python -m`` entry) in a subprocess (in ``cwd``);
    returns the CompletedProcess."""
    import sys

    return subprocess.run(
        [sys.executable, "-W", "ignore", *entry_argv(backend), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=entry_env(),
    )


def assert_one_line_error(result, *fragments, before_config=True):
    """Exit status 1, no traceback, exactly one ``RHNError:`` line holding ``fragments``; returns that line.

    ``before_config``: it failed before the run printed its config (bad input is found first).
    """
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("RHNError: ")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    if before_config:
        assert "Configuration" not in result.stdout
    return errors[0]


@pytest.fixture(scope="session")
def mongo(tmp_path_factory):
    """The MongoDB server of the storage tests: RHN_TEST_MONGO_URL, else a SecantusDB of our own."""
    from mongo_server import EXTERNAL_URL, ExternalServer, MongoServer

    if EXTERNAL_URL:
        yield ExternalServer()
        return
    server = MongoServer(tmp_path_factory.mktemp("mongo")).start()
    yield server
    server.stop()


@pytest.fixture
def mongo_db(mongo):
    """(server, name of a fresh database), dropped afterwards."""
    import pymongo
    from mongo_server import unique_db

    name = unique_db()
    yield mongo, name
    with pymongo.MongoClient(mongo.url, serverSelectionTimeoutMS=5000) as client:
        client.drop_database(name)


@pytest.fixture
def private_mongo(tmp_path):
    """A SecantusDB only this test uses, so it can stop and restart it."""
    from mongo_server import MongoServer

    server = MongoServer(tmp_path / "mongo-storage").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def slurm(tmp_path_factory, request):
    """A real one-node Slurm cluster (tests/slurm_cluster.py), started once; skipped with the reason where it
    cannot start, unless RHN_REQUIRE_SLURM=1 (CI), where that is a failure."""
    from slurm_cluster import SlurmCluster, unavailable

    required = os.environ.get("RHN_REQUIRE_SLURM") == "1"
    why = unavailable()
    if why:
        if required:
            pytest.fail(f"RHN_REQUIRE_SLURM=1 but {why}")
        pytest.skip(why)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        logs = cluster.logs()
        cluster.stop()
        if required:
            pytest.fail(f"Slurm did not start: {e}\n{logs}")
        pytest.skip(f"Slurm could not start here: {e}")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():  # shown in CI's log even while pytest captures output
        print(
            f"\nSlurm cluster up in {cluster.timings['slurmd: node idle']:.1f} s (seconds since start: "
            f"{cluster.timings})",
            flush=True,
        )
    yield cluster
    cluster.stop()


def pytest_terminal_summary(terminalreporter, config):
    """The random order's seed at the end of every run: pytest-randomly prints it in the header, which -q
    (the README's and CI's command) hides, so a failure in a shuffled CI run could not be repeated."""
    seed = getattr(config.option, "randomly_seed", None)
    if isinstance(seed, int) and config.pluginmanager.has_plugin("randomly"):
        terminalreporter.write_line(f"Tests ran in random order: repeat it with -p randomly --randomly-seed={seed}")
