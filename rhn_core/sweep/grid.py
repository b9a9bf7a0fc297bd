"""The runs of a sweep: fixed updates, swept keys (product and zipped), equal parameter count.

    -s depth=1,2,4 -s seed=1:4      product: 3 x 3 runs (a:b is range(a, b), a:b:c has a step)
    -z depth=1,2,4 -z hidden_size=300,260,200      zipped: 3 runs, the i-th values together
    --equal-params 2.4e6            each run's hidden_size gives the parameter count closest to this

Values are read as Sacred reads ``KEY=VALUE`` after ``with`` (a Python literal, else a
string). Every run has a key such as ``depth=2,seed=1`` (its swept values, sorted by
name): its folder, its log and its identity in the database all use it.
"""

import ast
import itertools
import re
from dataclasses import dataclass, field

from ..errors import RHNError
from ..hyperparams import NAMED_CONFIGS, check_config, resolve_config
from ..params import count_params, hidden_size_for_count, spec_from_config

# Set by the sweep for every run: a value given by hand would be overwritten or would clash.
RESERVED = ("save_dir", "resume")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RANGE = re.compile(r"^(-?\d+):(-?\d+)(?::(-?\d+))?$")


def literal(text):
    """A value as Sacred reads it on the command line: a Python literal, else the string itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def split_assignment(text, what):
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not _KEY.match(key):
        raise RHNError(f"{what} {text!r} is not KEY=VALUE: write e.g. depth=1,2,4")
    return key, value.strip()


def parse_values(text, key):
    """``1,2,4``, ``a:b`` or ``a:b:c`` (Python's range) -> list of values."""
    m = _RANGE.match(text)
    if m:
        values = list(range(int(m[1]), int(m[2]), int(m[3] or 1)))
    else:
        values = [literal(v.strip()) for v in text.split(",") if v.strip()]
    if not values:
        raise RHNError(f"{key}={text!r} gives no values: write e.g. {key}=1,2,4 or {key}=1:4")
    return values


@dataclass
class Run:
    """One run of the sweep: what it sets on top of the fixed updates."""

    values: dict  # the swept keys' values (and hidden_size under --equal-params)
    config: dict = field(default_factory=dict)  # the resolved config, for counts and checks

    @property
    def key(self):
        return ",".join(f"{k}={self.values[k]}" for k in sorted(self.values))

    @property
    def folder(self):
        """The key as a folder name (no path separators or shell-special characters)."""
        return re.sub(r"[^A-Za-z0-9_.=,+-]", "_", self.key)

    @property
    def nr_parameters(self):
        return count_params(spec_from_config(self.config, vocab_size(self.config)))


def vocab_size(cfg):
    """V of a config; for dataset=chars read from the text (the config leaves it to the data)."""
    if cfg["vocab_size"]:
        return cfg["vocab_size"]
    from ..data import readers

    return readers.load_corpus(cfg).vocab_size


def parse_fixed(words):
    """``[with] NAMED... KEY=VALUE...`` -> (named configs, updates)."""
    words = list(words)
    if words and words[0] == "with":
        words = words[1:]
    named, updates = [], {}
    for word in words:
        if "=" in word:
            key, value = split_assignment(word, "update")
            updates[key] = literal(value)
        elif word in NAMED_CONFIGS:
            named.append(word)
        else:
            raise RHNError(f"{word!r} is neither KEY=VALUE nor a named config ({', '.join(NAMED_CONFIGS)})")
    for key in RESERVED:
        if key in updates:
            raise RHNError(f"{key}= is set by the sweep for each run (its folder under --sweep-dir): drop it")
    return named, updates


def expand(named, fixed, product=(), zipped=(), equal_params=None):
    """The runs of a sweep, in order (the product's last key varies fastest; zipped keys last)."""
    axes, seen = [], set(fixed)
    for text in product:
        key, value = split_assignment(text, "-s")
        if key in seen:
            raise RHNError(f"{key} is given twice (fixed or swept): give each key once")
        seen.add(key)
        axes.append([{key: v} for v in parse_values(value, key)])
    if zipped:
        columns = []
        for text in zipped:
            key, value = split_assignment(text, "-z")
            if key in seen:
                raise RHNError(f"{key} is given twice (fixed or swept): give each key once")
            seen.add(key)
            columns.append((key, parse_values(value, key)))
        lengths = {len(v) for _, v in columns}
        if len(lengths) > 1:
            raise RHNError(
                "zipped keys need as many values each: " + ", ".join(f"{k} has {len(v)}" for k, v in columns)
            )
        axes.append([dict(zip([k for k, _ in columns], row)) for row in zip(*[v for _, v in columns])])
    if equal_params is not None and "hidden_size" in seen:
        raise RHNError("--equal-params chooses hidden_size for each run: do not also set or sweep hidden_size")
    known = set(resolve_config(*named)) | {"seed"}  # Sacred adds seed to every config
    for key in seen - set(fixed):
        if key not in known:
            raise RHNError(f"swept key {key!r} is not a config key: see print_config")
    runs = []
    for combo in itertools.product(*axes):
        values = {k: v for part in combo for k, v in part.items()}
        try:
            cfg = resolve_config(*named, **fixed, **values)
        except KeyError as e:
            raise RHNError(f"unknown named config {e}: use one of {', '.join(NAMED_CONFIGS)}")
        if equal_params is not None:
            spec = spec_from_config(cfg, vocab_size(cfg))
            values["hidden_size"] = hidden_size_for_count(spec, equal_params)
            cfg = resolve_config(*named, **fixed, **values)
        check_config(cfg)  # a bad value fails here, before anything starts
        runs.append(Run(values, cfg))
    keys = [r.key for r in runs]
    if len(set(keys)) < len(keys):
        raise RHNError("two runs of the sweep have the same values: remove repeated values")
    return runs
