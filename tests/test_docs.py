"""The documentation is tested: its commands parse, its configuration reference is current, and
the Python of the layer page runs.

Every fenced shell block (bash, sh, shell, console) of README.md, CONTRIBUTING.md and docs/ is read;
each command of this project in it (``rhn_train_*.py``, ``rhn-sweep``, ``python -m rhn_core...``,
``python benchmarks|tools|data/....py``) is checked against the real parser: Sacred's for the
entry points (the command exists, every named config exists, every KEY= is a config key with a
valid value, options exist and sit where Sacred accepts them), argparse for the others (stopped
right after parsing, so nothing runs). A renamed key or option in the code then fails here.
"""

import argparse
import contextlib
import glob
import importlib.util
import io
import os
import re
import runpy
import shlex
import sys
import warnings

import pytest
from conftest import REPO

SHELL_LANGS = {"bash", "sh", "shell", "console"}
FENCE = re.compile(
    r"^(?P<indent> *)(?P<fence>```+|~~~+)\s*(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)(?P=fence)\s*$",
    re.MULTILINE | re.DOTALL,
)
ENTRY = re.compile(r"(^|/)rhn_train_\w+\.py$")
SCRIPT = re.compile(r"^(\./)?(benchmarks|tools|data)/[\w/]+\.py$")
SEPARATORS = {"&&", "||", ";", "|", "&"}


def doc_files():
    files = [os.path.join(REPO, name) for name in ("README.md", "CONTRIBUTING.md", os.path.join("data", "README.md"))]
    files += sorted(glob.glob(os.path.join(REPO, "docs", "**", "*.md"), recursive=True))
    return [f for f in files if os.path.isfile(f)]


def blocks(text, langs):
    """(language, body, line number) of the fenced blocks of ``text`` in ``langs``."""
    for m in FENCE.finditer(text):
        if m["lang"] in langs:
            body = "\n".join(line[len(m["indent"]) :] for line in m["body"].splitlines())
            yield m["lang"], body, text[: m.start()].count("\n") + 1


def shell_commands(lang, body):
    """The command lines of a shell block, continuations joined; in a console block only the lines after ``$``."""
    lines, pending = [], ""
    for line in body.splitlines():
        if lang == "console" and not pending:
            if not line.startswith("$ "):
                continue
            line = line[2:]
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    return [line for line in lines if line.strip()]


def segments(line):
    """The simple commands of a line (split at && ; | ...), comments dropped."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars="&|;")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    words, out = list(lexer), [[]]
    for word in words:
        if word in SEPARATORS:
            out.append([])
        else:
            out[-1].append(word)
    return [seg for seg in out if seg]


class Parsed(Exception):
    def __init__(self, namespace):
        self.namespace = namespace


@contextlib.contextmanager
def stop_after_parsing():
    """argparse parses as usual, then raises Parsed instead of returning: the command does no work."""
    original = argparse.ArgumentParser.parse_args

    def parse_args(self, args=None, namespace=None):
        raise Parsed(original(self, args, namespace))

    argparse.ArgumentParser.parse_args = parse_args
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_args = original


FRAMEWORKS = ("torch", "tensorflow", "keras", "triton")


class FrameworkMissing(Exception):
    """A command whose script imports a framework this environment lacks: it cannot be parsed here."""


def run_parser(target, args, is_module):
    """The namespace that ``python [-m] target args`` parses, or an error message."""
    if not is_module:
        path = os.path.join(REPO, target)
        if not os.path.isfile(path):
            return None, f"no such script {target}"
        with open(path, encoding="utf-8") as f:
            if "argparse" not in f.read():
                return None, f"{target} does not parse its arguments with argparse: cannot check it"
    err = io.StringIO()
    saved_argv = sys.argv
    sys.argv = [target, *args]
    try:
        with (
            stop_after_parsing(),
            contextlib.redirect_stderr(err),
            contextlib.redirect_stdout(io.StringIO()),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the module was imported before (by a test)
            if is_module:
                runpy.run_module(target, run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(os.path.join(REPO, target), run_name="__main__")
    except Parsed as parsed:
        return parsed.namespace, None
    except SystemExit as e:
        if e.code in (0, None):  # --help
            return None, None
        return None, err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else f"exit {e.code}"
    except ImportError as e:
        if e.name in FRAMEWORKS:  # a benchmark of a framework not installed here: checked where it is
            raise FrameworkMissing(e.name)
        return None, f"cannot import {target}: {e}"
    finally:
        sys.argv = saved_argv
    return None, f"{target} ran without parsing its arguments"


def config_words_errors(words):
    """Errors of ``NAMED... KEY=VALUE...`` as written after ``with``."""
    from sacred.arg_parser import get_config_updates

    from rhn_core.hyperparams import KEY_CHECKS, NAMED_CONFIGS

    words = [w for w in words if w != "with"]
    updates, named = get_config_updates(words)
    errors = [f"unknown named config {n!r}" for n in named if n not in NAMED_CONFIGS]
    keys = config_keys()
    for key, value in updates.items():
        if key not in keys:
            errors.append(f"unknown config key {key!r}")
        elif key in KEY_CHECKS and not isinstance(value, dict):
            message = KEY_CHECKS[key](key, value)
            if message:
                errors.append(message)
    return errors


def config_keys():
    from sacred.config.config_scope import ConfigScope

    from rhn_core.hyperparams import hyperparameters

    return set(ConfigScope(hyperparameters)()) | {"seed"}


_EXPERIMENTS = {}


def experiment(script):
    if script not in _EXPERIMENTS:
        _EXPERIMENTS[script] = runpy.run_path(os.path.join(REPO, script), run_name="docs_check")["ex"]
    return _EXPERIMENTS[script]


def entry_point_errors(script, args):
    """Sacred's own parse of ``python script args`` (docopt), then the commands, named configs and keys."""
    from docopt import DocoptExit, docopt

    name = os.path.basename(script)
    if not os.path.isfile(os.path.join(REPO, name)):
        return [f"no entry point {name}"]
    ex = experiment(name)
    _, _, internal_usage = ex.get_usage()
    try:
        args_ = docopt(internal_usage, args, default_help=False)
    except DocoptExit:
        return [f"Sacred does not accept the options or their order: {' '.join(args)}"]
    errors = []
    command = args_.get("COMMAND") or ex.default_command
    if not args_["help"]:
        error = ex._check_command(command)
        if error:
            errors.append(error)
    return errors + config_words_errors(args_["UPDATE"])


def command_errors(words):
    """Errors of one simple command of this project (None: not a command of this project)."""
    for i, word in enumerate(words):
        if ENTRY.search(word):
            return entry_point_errors(word, words[i + 1 :])
        if word == "rhn-sweep" or (word == "-m" and i + 1 < len(words) and words[i + 1] == "rhn_core.sweep"):
            args = words[i + 1 :] if word == "rhn-sweep" else words[i + 2 :]
            return sweep_errors(args)
        if word == "-m" and i + 1 < len(words) and words[i + 1] == "rhn_core":  # python -m rhn_core BACKEND ...
            return backend_command_errors(words[i + 2 :])
        if word == "-m" and i + 1 < len(words) and words[i + 1].startswith("rhn_core"):
            return argparse_errors(words[i + 1], words[i + 2 :], is_module=True)
        if SCRIPT.match(word) and i > 0 and os.path.basename(words[i - 1]).startswith("python"):
            return argparse_errors(word.removeprefix("./"), words[i + 1 :], is_module=False)
    return None


def backend_command_errors(args):
    """``python -m rhn_core BACKEND ARGS``: a known backend, then Sacred's command line (the same for every backend)."""
    from rhn_core.backends import BACKENDS

    if not args or args[0] not in BACKENDS:
        return [f"unknown backend {args[0] if args else ''!r}: use one of {', '.join(BACKENDS)}"]
    return entry_point_errors("rhn_train_torch.py", args[1:])


def argparse_errors(target, args, is_module):
    namespace, error = run_parser(target, args, is_module)
    if error:
        return [error]
    errors = []
    for attr in ("config",):  # benchmarks: --config "NAMED KEY=VALUE"
        values = getattr(namespace, attr, None) or []
        for text in [values] if isinstance(values, str) else values:
            errors += config_words_errors(text.split())
    return errors


def sweep_errors(args):
    namespace, error = run_parser("rhn_core.sweep", args, is_module=True)
    if error:
        return [error]
    if namespace is None or namespace.command != "run":
        return []
    keys = config_keys()
    errors = [
        f"swept key {spec.split('=')[0]!r} is not a config key"
        for spec in namespace.sweep + namespace.zip
        if spec.split("=")[0] not in keys
    ]
    if namespace.entry not in ("torch", "tf") and not ENTRY.search(namespace.entry):
        errors.append(f"unknown sweep entry {namespace.entry!r}")
    return errors + config_words_errors(namespace.fixed)


def doc_commands():
    """(file:line, command) of every project command in a shell block of the docs."""
    found = []
    for path in doc_files():
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for lang, body, line in blocks(text, SHELL_LANGS):
            for command in shell_commands(lang, body):
                found.append((f"{os.path.relpath(path, REPO)}:{line}", command))
    return found


def check(commands):
    """The errors of ``commands`` [(where, line)] and how many project commands were checked."""
    problems, checked = [], 0
    for where, line in commands:
        try:
            parts = segments(line)
        except ValueError as e:
            problems.append(f"{where}: {line!r}: {e}")
            continue
        for words in parts:
            try:
                errors = command_errors(words)
            except FrameworkMissing:
                continue
            if errors is None:
                continue
            checked += 1
            problems += [f"{where}: {line.strip()!r}: {e}" for e in errors]
    return problems, checked


def test_every_command_in_the_docs_parses():
    problems, checked = check(doc_commands())
    assert not problems, "\n".join(problems)
    assert checked >= 40, checked  # the docs show this many; fewer means the reader missed blocks


@pytest.mark.parametrize(
    "line, message",
    [
        ("python rhn_train_torch.py with ptb_sota num_threads=1", "unknown config key 'num_threads'"),
        ("python rhn_train_tf.py with ptb_best depth=2", "unknown named config 'ptb_best'"),
        ("python rhn_train_torch.py evaluate_mcmc with demo", "evaluate_mcmc"),
        ("python rhn_train_torch.py with demo lr_decay=0.98", "lr_decay=0.98 must be a number >= 1"),
        ("python rhn_train_torch.py --mongo-db x with demo", "Sacred does not accept"),
        ("rhn-sweep run --name d -F runs -s num_threads=1,2 torch with demo", "swept key 'num_threads'"),
        ("rhn-sweep run --name d -F runs --paralel 2 torch with demo", "unrecognized arguments"),
        ("rhn-sweep run --name d -F runs torch with demo num_threads=1", "unknown config key 'num_threads'"),
        ("python -m rhn_core.tracking.report --mongo db --y_axis x", "unrecognized arguments"),
        pytest.param(
            "python benchmarks/throughput.py --config 'ptb_sota num_threads=1'",
            "unknown config key 'num_threads'",
            marks=pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="the benchmark imports torch"),
        ),
        ("python data/prepare.py wikitext", "invalid choice"),
        ("python -m rhn_core jax with demo", "unknown backend 'jax'"),
        ("python -m rhn_core torch with demo num_threads=1", "unknown config key 'num_threads'"),
    ],
)
def test_the_check_catches_stale_commands(line, message):
    problems, checked = check([("planted", line)])
    assert checked == 1 and any(message in p for p in problems), problems


def test_a_planted_stale_key_in_the_readme_fails(tmp_path):
    """The same check over README.md with one stale key added to its first shell block."""
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        text = f.read()
    lang, body, line = next(blocks(text, SHELL_LANGS))
    planted = [
        (f"README.md:{line}", c)
        for c in shell_commands(lang, body + "\npython rhn_train_torch.py with demo num_threads=1\n")
    ]
    problems, _ = check(planted)
    assert problems and all("num_threads" in p for p in problems), problems


def test_the_configuration_page_is_current():
    sys.path.insert(0, os.path.join(REPO, "tools"))
    try:
        import config_docs
    finally:
        sys.path.pop(0)
    old, new = config_docs.current_page()
    assert old == new, "docs/configuration.md is stale: run python tools/config_docs.py"


def python_blocks(page):
    with open(os.path.join(REPO, "docs", page), encoding="utf-8") as f:
        return [body for _, body, _ in blocks(f.read(), {"python"})]


@pytest.mark.parametrize("page", ["layer.md"])
def test_the_python_of_the_layer_page_runs(page, tmp_path, monkeypatch):
    """Each block of the page runs, in order, in one namespace (as a reader pastes them)."""
    pytest.importorskip("torch")  # the page shows both layers
    pytest.importorskip("keras")
    monkeypatch.chdir(tmp_path)  # the Keras block saves a model file
    code = python_blocks(page)
    assert len(code) >= 3
    namespace = {"__name__": "docs_layer"}
    for body in code:
        exec(compile(body, f"docs/{page}", "exec"), namespace)


def test_the_tests_and_files_the_docs_cite_exist():
    """``test_x.py::name`` names a test function of tests/; a path of this repository in backticks exists."""
    missing = []
    for path in doc_files():
        with open(path, encoding="utf-8") as f:
            text = f.read()
        where = os.path.relpath(path, REPO)
        for file, name in re.findall(r"\b(test_\w+\.py)::(\w+)", text):
            source = os.path.join(REPO, "tests", file)
            found = False
            if os.path.isfile(source):
                with open(source, encoding="utf-8") as f:
                    found = bool(re.search(rf"^\s*def {name}\(", f.read(), re.MULTILINE))
            if not found:
                missing.append(f"{where}: {file}::{name}")
        for cited in re.findall(r"`((?:rhn_core|tests|benchmarks|tools|data|docs)/[\w./-]*\w)`", text):
            if not os.path.exists(os.path.join(REPO, cited)):
                missing.append(f"{where}: {cited}")
    assert not missing, "\n".join(missing)


def test_the_links_of_the_root_pages_lead_somewhere():
    """README.md, CONTRIBUTING.md, CHANGELOG.md and data/README.md are read on the repository's web page,
    outside the docs site (whose links mkdocs build --strict checks): their relative links name files that exist."""
    broken = []
    for name in ("README.md", "CONTRIBUTING.md", "CHANGELOG.md", os.path.join("data", "README.md")):
        path = os.path.join(REPO, name)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" not in target and not os.path.exists(os.path.join(os.path.dirname(path), target)):
                broken.append(f"{name}: {target}")
    assert not broken, "\n".join(broken)
