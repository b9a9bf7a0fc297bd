"""Configuration: the original base config, its named configs, and their checks.

Key names and values are those of the original ``rhn_train.py`` (docs/faithfulness.md;
docs/configuration.md is generated from this file). Named configs list only what they change. Keys added by this port
come last in the base scope; their defaults keep the original behaviour. The
trailing comment of each key is what ``print_config`` shows next to it.
"""

import math
import os

from .errors import RHNError

DEMO_TEXT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_data", "alice29.txt.xz")

DATASETS = ("ptb", "enwik8", "text8", "chars")
VOCAB_SIZES = {"ptb": 10000, "enwik8": 205, "text8": 27}
DTYPES = ("float32", "float64")
RHN_IMPLS = ("auto", "reference", "onednn", "triton")
PRECISIONS = ("float32", "tf32", "bf16")


def hyperparameters():
    data_path = "data"  # directory of the data files (for dataset=chars: the text file)
    dataset = "ptb"  # ptb (words), enwik8 / text8 (bytes), chars (any text file, bytes)
    init_scale = 0.04  # weights and non-T biases start as Uniform(-init_scale, init_scale)
    init_bias = -2.0  # initial value of every transform-gate (T) bias
    num_layers = 1  # L: stacked RHN layers
    depth = 4  # D: recurrence depth (micro-layers per time step)
    learning_rate = 0.2  # initial SGD learning rate
    lr_decay = 1.02  # lr is divided by this every epoch after max_epoch
    weight_decay = 1e-7  # lambda of the L2 term lambda/2 * sum(theta^2), all parameters
    max_grad_norm = 10  # global-norm clipping threshold (loss summed over time)
    num_steps = 35  # T: truncated-BPTT length
    hidden_size = 1000  # H: units per RHN layer
    max_epoch = 20  # epochs at the initial learning rate
    max_max_epoch = 500  # total epochs (no early stopping)
    batch_size = 20  # B
    drop_x = 0.25  # word/char dropout: whole embedding vector, tied for repeated tokens
    drop_i = 0.75  # dropout of each layer's input (variational, shared over time)
    drop_h = 0.25  # dropout of the recurrent state inside every micro-layer
    drop_o = 0.75  # dropout of the top layer's output before the softmax
    tied = True  # tie the softmax weights to the embedding
    load_model = ""  # checkpoint (.npz) scored by the evaluate command
    mc_steps = 0  # accepted MC-dropout samples for evaluate_mc (the original README's 64.4, depth 5: 1000)
    vocab_size = VOCAB_SIZES.get(dataset, 0)  # V, derived from dataset; 0 = taken from the data (chars)
    # --- added by this port; the defaults keep the original behaviour ---
    device = "auto"  # cpu, cuda, cuda:N; auto = cuda when available
    dtype = "float32"  # float32 (original) or float64
    save_dir = ""  # where checkpoints go; '' = runs/<dataset>_<seed>
    resume = ""  # path of a last.npz (or any training checkpoint) to continue from
    full_eval_num_steps = 1000  # window of the final B=1 pass; any value scores exactly like T=1
    num_test_symbols = 5000000  # enwik8/text8: symbols in each of valid and test (original split)
    progress = True  # show progress bars
    mc_mode = "faithful"  # evaluate_mc: faithful (the original's quirks) or corrected (see rhn_core/mc.py)
    mc_accept_perplexity = 500  # evaluate_mc: a sample counts only if its own perplexity is below this
    mc_batch_size = 32  # evaluate_mc: samples run in parallel as the rows of one batch
    tied_noise = True  # H and T share dropout masks (TF original); False: separate masks (Torch7, Theano option)
    init_other_bias = "uniform"  # H and softmax biases: 'uniform' as TF, or a number (Theano's init_other_bias)
    rhn_impl = (
        "auto"  # torch: reference, onednn (CPU float32) or triton (CUDA); auto: triton on CUDA, onednn from H 512
    )
    cuda_graphs = True  # torch on CUDA: capture the train and eval steps once in CUDA graphs and replay them
    precision = (
        "float32"  # float32; tf32 (CUDA TF32 matmuls); bf16: all products bf16 on CPU (AVX512_BF16/AMX), CUDA autocast
    )
    replicas = 1  # TF: devices of the local machine trained in parallel (MirroredStrategy); torch: use torchrun
    dist_timeout = 600  # seconds a rank waits for the others in a collective before it stops with an error
    sample_length = 200  # sample: symbols (words or bytes) the model writes after sample_prime
    sample_prime = ""  # sample: text the model reads first ('' = the start of a sentence or line)
    temperature = 1.0  # sample: divides the log-probabilities; below 1 more predictable, above more varied
    sample_at_end = False  # after training, print a sample of the best model (sample_length, prime, temperature)
    threads = 0  # CPU threads of the framework; 0 = OMP_NUM_THREADS if set, else the cores this process may use
    resume_other_data = False  # let resume= continue on data other than the checkpoint's (the data fingerprint differs)


def ptb_sota():
    depth = 10  # D of the README's best PTB model (23.5 M parameters)
    hidden_size = 830  # H of the README's best PTB model


ptb_sota.__doc__ = "The paper's best PTB model: words, depth 10, H 830, tied (23.5 M parameters, 500 epochs)."


# The line --help shows for each named config is its __doc__ (a docstring inside a config
# function would become a config entry).
class Described(dict):
    """A named config given as values (Sacred takes a dict), with the line ``--help`` shows for it."""

    def __init__(self, doc, values):
        super().__init__(values)
        self.__doc__ = doc


# The two character-level configs differ only in their dataset (both "test BPC 1.27"
# in the original).
CHAR_SOTA = dict(
    init_bias=-4.0,  # T biases start lower for characters
    depth=10,
    lr_decay=1.03,  # faster decay for the long character epochs
    num_steps=50,
    hidden_size=1500,
    max_epoch=5,
    batch_size=128,
    drop_x=0.10,
    drop_i=0.40,
    drop_h=0.10,
    drop_o=0.40,
    tied=False,  # untied: the embedding is V x V (in_size rule)
)
enwik8_sota = Described(
    "The paper's enwik8 model: bytes of Wikipedia, depth 10, H 1500 (46.0 M parameters).",
    dict(CHAR_SOTA, dataset="enwik8"),
)  # 205 byte values, 45,994,730 parameters
text8_sota = Described(
    "The paper's text8 model: letters and spaces, depth 10, H 1500 (45.2 M parameters).",
    dict(CHAR_SOTA, dataset="text8"),
)  # a-z and space, 45,152,256 parameters


def demo():
    dataset = "chars"  # character-level on the text file below
    data_path = DEMO_TEXT  # Alice's Adventures in Wonderland, shipped in the package
    init_bias = -2.0  # gates open enough to learn from epoch 1 (-4, as the char configs: worse for 4 epochs)
    depth = 4  # D
    hidden_size = 128  # H: small enough for about a minute (192: 2.2x the time per step)
    num_steps = 50  # T
    batch_size = 16  # B: twice the updates per epoch of B=32 (valid bits 2.62 against 3.68 after 3 epochs)
    learning_rate = 0.5  # a short run on a small model can take a larger step (1.0 diverges)
    max_epoch = 5  # epochs at the initial learning rate
    max_max_epoch = 8  # total epochs: valid bits 3.90 after 1, 2.01 after 8 (seed 1)
    lr_decay = 1.3  # decay fast: the run is short
    drop_x = 0.0  # a small model on a small text needs little dropout
    drop_i = 0.1  # input dropout
    drop_h = 0.0  # recurrent dropout
    drop_o = 0.1  # output dropout
    tied = False  # untied, as the character-level configs
    sample_at_end = True  # end with text written by the best model
    sample_length = 300  # characters
    sample_prime = "Alice"  # the text it continues
    threads = 1  # one: a second thread spins on a busy machine (benchmarks/threads.py); same figures on any machine


demo.__doc__ = "Characters of Alice in Wonderland (shipped): about a minute on one CPU core, then a sample."


def tiny():
    hidden_size = 16  # a few seconds per run, for tests
    depth = 2  # D >= 2 keeps the recurrent micro-layers in play
    num_steps = 5  # T
    batch_size = 4  # B
    max_epoch = 1  # lr decays from the second epoch on
    max_max_epoch = 2  # two epochs: decay, best-model selection and checkpoints all run
    full_eval_num_steps = 100  # window of the final B=1 pass
    progress = False  # quiet test logs


tiny.__doc__ = "A 16-unit model that runs in seconds, to check a set-up (add dataset=... data_path=...)."


NAMED_CONFIGS = {"ptb_sota": ptb_sota, "enwik8_sota": enwik8_sota, "text8_sota": text8_sota, "demo": demo, "tiny": tiny}


def resolve_config(*named, **updates):
    """The config Sacred would build for ``with NAMED... KEY=VALUE...``, without a run.

    For scripts such as the benchmark; named configs apply in order, then ``updates``.
    """
    from sacred.config.config_scope import ConfigScope

    fixed = {}
    for name in named:  # later named configs win, as in Sacred
        scope = NAMED_CONFIGS[name]
        fixed.update(scope if isinstance(scope, dict) else ConfigScope(scope)())
    fixed.update(updates)
    return dict(ConfigScope(hyperparameters)(fixed=fixed))


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def integer(low):
    """An int (not a bool) >= ``low``."""
    rule = "a positive integer" if low == 1 else f"an integer >= {low}"
    return lambda key, v: None if _is_int(v) and v >= low else f"{key}={v!r} must be {rule}"


def number(rule, test, allow_inf=False):
    """A real number (not a bool, not NaN, finite unless ``allow_inf``) passing ``test``."""

    def check(key, v):
        ok = _is_number(v) and not math.isnan(v) and (allow_inf or math.isfinite(v)) and test(v)
        return None if ok else f"{key}={v!r} {rule}"

    return check


def choice(values, message):
    return lambda key, v: None if isinstance(v, str) and v in values else message.format(key=key, v=v)


def text(rule):
    return lambda key, v: None if isinstance(v, str) else f"{key}={v!r} must be {rule}"


def flag(key, v):
    return None if isinstance(v, bool) else f"{key}={v!r}: use True or False"


def other_bias(key, v):
    ok = v == "uniform" or (_is_number(v) and math.isfinite(v))
    return None if ok else f"{key}={v!r}: use 'uniform' or a number such as 0"


POSITIVE = number("must be a positive number", lambda v: v > 0)
DROP = number("is a drop probability: use a number in [0, 1)", lambda v: 0 <= v < 1)
PATH = text("a path (a string; '' for none)")

# Every key of the base config (and Sacred's seed) -> its check, in the order of the scope.
# tests/test_bad_inputs.py walks every key with values of the wrong type through the entry point.
KEY_CHECKS = {
    "data_path": text("a path (a string)"),
    "dataset": choice(DATASETS, "unknown dataset {v!r}: use one of " + ", ".join(DATASETS)),
    "init_scale": POSITIVE,
    "init_bias": number("must be a finite number", lambda v: True),
    "num_layers": integer(1),
    "depth": integer(1),
    "learning_rate": POSITIVE,
    "lr_decay": number(
        "must be a number >= 1: the learning rate is divided by it every epoch after "
        "max_epoch (below 1 it would grow); 1 keeps it constant",
        lambda v: v >= 1,
    ),
    "weight_decay": number("must be a finite number >= 0", lambda v: v >= 0),
    "max_grad_norm": POSITIVE,
    "num_steps": integer(1),
    "hidden_size": integer(1),
    "max_epoch": integer(0),
    "max_max_epoch": integer(1),
    "batch_size": integer(1),
    "drop_x": DROP,
    "drop_i": DROP,
    "drop_h": DROP,
    "drop_o": DROP,
    "tied": flag,
    "load_model": PATH,
    "mc_steps": integer(0),
    "vocab_size": integer(0),
    "device": text("a device name such as auto, cpu, cuda or cuda:1"),
    "dtype": choice(DTYPES, "{key}={v!r}: use float32 or float64"),
    "save_dir": PATH,
    "resume": PATH,
    "full_eval_num_steps": integer(1),
    "num_test_symbols": integer(1),
    "progress": flag,
    "mc_mode": choice(("faithful", "corrected"), "{key}={v!r}: use faithful (as the original) or corrected"),
    "mc_accept_perplexity": number(
        "must be a positive number (inf accepts every sample)", lambda v: v > 0, allow_inf=True
    ),
    "mc_batch_size": integer(1),
    "tied_noise": flag,
    "init_other_bias": other_bias,
    "rhn_impl": choice(RHN_IMPLS, "{key}={v!r}: use one of " + ", ".join(RHN_IMPLS)),
    "cuda_graphs": flag,
    "precision": choice(PRECISIONS, "{key}={v!r}: use one of " + ", ".join(PRECISIONS)),
    "replicas": integer(1),
    "dist_timeout": POSITIVE,
    "sample_length": integer(1),
    "sample_prime": text("text, e.g. sample_prime='Alice was'"),
    "temperature": number(
        "must be a positive number: 1 samples the model as it is, lower is more predictable", lambda v: v > 0
    ),
    "sample_at_end": flag,
    "threads": integer(0),
    "resume_other_data": flag,
    "seed": integer(0),  # Sacred's key; numpy's SeedSequence takes non-negative integers
}


def check_value(key, value):
    """RHNError with a one-line message when ``value`` is not a valid ``key``."""
    message = KEY_CHECKS[key](key, value)
    if message:
        raise RHNError(message)


def check_config(cfg):
    """Reject values that cannot work, with a message that says what to change."""
    for key, value in cfg.items():
        if key in KEY_CHECKS:
            check_value(key, value)
    if cfg["precision"] != "float32" and cfg["dtype"] != "float32":
        raise RHNError(
            f"precision={cfg['precision']} applies to float32 models: use dtype=float32 or precision=float32"
        )
    if cfg["vocab_size"] == 0 and cfg["dataset"] != "chars":
        raise RHNError(f"vocab_size={cfg['vocab_size']!r} must be positive for dataset={cfg['dataset']}")


def lr_at(cfg, epoch):
    """Learning rate of 1-based ``epoch``: lr / lr_decay^max(epoch - max_epoch, 0)."""
    return cfg["learning_rate"] / cfg["lr_decay"] ** max(epoch - cfg["max_epoch"], 0)


# Keys that say where files are or how a run shows itself; a resumed run may change them unnoticed.
# (data_path: the data itself is compared by its fingerprint.)
NOT_TRAINING_KEYS = (
    "resume",
    "save_dir",
    "progress",
    "threads",
    "dist_timeout",
    "data_path",
    "resume_other_data",
    "load_model",
)


def config_changes(stored, cfg):
    """{key: (value in ``stored``, value in ``cfg``)} of the keys a resumed run changes (keys a checkpoint
    written by an older version does not know are left out)."""
    return {k: (stored[k], cfg[k]) for k in cfg if k in stored and k not in NOT_TRAINING_KEYS and stored[k] != cfg[k]}
