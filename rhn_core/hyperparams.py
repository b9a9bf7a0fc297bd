"""Configuration: the original base config, its named configs, and their checks.

Key names and values are those of the original ``rhn_train.py`` (ORIGINAL_SPEC
section 5.1). Named configs list only what they change. Keys added by this port
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
RHN_IMPLS = ("auto", "reference", "triton")
PRECISIONS = ("float32", "tf32", "bf16")


def hyperparameters():
    data_path = 'data'  # directory of the data files (for dataset=chars: the text file)
    dataset = 'ptb'  # ptb (words), enwik8 / text8 (bytes), chars (any text file, bytes)
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
    load_model = ''  # checkpoint (.npz) scored by the evaluate command
    mc_steps = 0  # accepted MC-dropout samples for evaluate_mc (the README's 64.4 used 1000)
    vocab_size = VOCAB_SIZES.get(dataset, 0)  # V, derived from dataset; 0 = taken from the data (chars)
    # --- added by this port; the defaults keep the original behaviour ---
    device = 'auto'  # cpu, cuda, cuda:N; auto = cuda when available
    dtype = 'float32'  # float32 (original) or float64
    save_dir = ''  # where checkpoints go; '' = runs/<dataset>_<seed>
    resume = ''  # path of a last.npz (or any training checkpoint) to continue from
    full_eval_num_steps = 1000  # window of the final B=1 pass; any value scores exactly like T=1
    num_test_symbols = 5000000  # enwik8/text8: symbols in each of valid and test (original split)
    progress = True  # show progress bars
    mc_mode = 'faithful'  # evaluate_mc: faithful (the original's quirks) or corrected (see rhn_core/mc.py)
    mc_accept_perplexity = 500  # evaluate_mc: a sample counts only if its own perplexity is below this
    mc_batch_size = 32  # evaluate_mc: samples run in parallel as the rows of one batch
    tied_noise = True  # H and T share dropout masks (TF original); False: separate masks (Torch7, Theano option)
    init_other_bias = 'uniform'  # H and softmax biases: 'uniform' as TF, or a number (Theano's init_other_bias)
    rhn_impl = 'auto'  # torch micro-steps: reference (PyTorch ops), triton (fused kernels, CUDA); auto = triton on CUDA
    cuda_graphs = True  # torch on CUDA: capture the train and eval steps once in CUDA graphs and replay them
    precision = 'float32'  # float32 products; tf32 (CUDA: TF32 matmuls) or bf16 (autocast outside the recurrence)
    replicas = 1  # TF: devices of this machine trained in parallel (MirroredStrategy); torch: use torchrun
    dist_timeout = 600  # seconds a rank waits for the others in a collective before it stops with an error
    sample_length = 200  # sample: symbols (words or bytes) the model writes after sample_prime
    sample_prime = ''  # sample: text the model reads first ('' = the start of a sentence or line)
    temperature = 1.0  # sample: divides the log-probabilities; below 1 more predictable, above more varied
    sample_at_end = False  # after training, print a sample of the best model (sample_length, prime, temperature)
    threads = 0  # CPU threads of the framework; 0 = OMP_NUM_THREADS if set, else the cores this process may use


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
    drop_x=0.10, drop_i=0.40, drop_h=0.10, drop_o=0.40,
    tied=False,  # untied: the embedding is V x V (in_size rule)
)
enwik8_sota = Described("The paper's enwik8 model: bytes of Wikipedia, depth 10, H 1500 (46.0 M parameters).",
                        dict(CHAR_SOTA, dataset="enwik8"))  # 205 byte values, 45,994,730 parameters
text8_sota = Described("The paper's text8 model: letters and spaces, depth 10, H 1500 (45.2 M parameters).",
                       dict(CHAR_SOTA, dataset="text8"))  # a-z and space, 45,152,256 parameters


def demo():
    dataset = 'chars'  # character-level on the text file below
    data_path = DEMO_TEXT  # Alice's Adventures in Wonderland, shipped in the package
    init_bias = -4.0  # as the character-level configs
    depth = 4  # D
    hidden_size = 192  # H
    num_steps = 50  # T
    batch_size = 32  # B
    learning_rate = 0.5  # a short run on a small model can take a larger step (1.0 diverges)
    max_epoch = 12  # epochs at the initial learning rate
    max_max_epoch = 20  # about a minute on 2 CPU cores
    lr_decay = 1.1  # decay fast: the run is short
    drop_x = 0.0  # a small model on a small text needs little dropout
    drop_i = 0.1  # input dropout
    drop_h = 0.0  # recurrent dropout
    drop_o = 0.1  # output dropout
    tied = False  # untied, as the character-level configs


demo.__doc__ = "Characters of Alice in Wonderland (shipped): about a minute on 2 CPU cores, then a sample."


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


NAMED_CONFIGS = {"ptb_sota": ptb_sota, "enwik8_sota": enwik8_sota, "text8_sota": text8_sota, "demo": demo,
                 "tiny": tiny}


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


def is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_config(cfg):
    """Reject values that cannot work, with a message that says what to change."""
    if cfg["dataset"] not in DATASETS:
        raise RHNError(f"unknown dataset {cfg['dataset']!r}: use one of {', '.join(DATASETS)}")
    positive = ("num_layers", "depth", "num_steps", "hidden_size", "batch_size",
                "full_eval_num_steps", "max_max_epoch", "replicas")
    for key in positive:
        if not is_count(cfg[key]):
            raise RHNError(f"{key}={cfg[key]!r} must be a positive integer")
    if cfg["max_epoch"] < 0:
        raise RHNError(f"max_epoch={cfg['max_epoch']!r} must be >= 0")
    for key in ("drop_x", "drop_i", "drop_h", "drop_o"):
        if not 0.0 <= cfg[key] < 1.0:
            raise RHNError(f"{key}={cfg[key]!r} is a drop probability: use a value in [0, 1)")
    for key in ("learning_rate", "lr_decay", "max_grad_norm", "init_scale", "dist_timeout"):
        if not (is_number(cfg[key]) and cfg[key] > 0):
            raise RHNError(f"{key}={cfg[key]!r} must be a positive number")
    if cfg["weight_decay"] < 0:
        raise RHNError(f"weight_decay={cfg['weight_decay']!r} must be >= 0")
    other = cfg["init_other_bias"]
    if other != "uniform" and (isinstance(other, bool) or not isinstance(other, (int, float))):
        raise RHNError(f"init_other_bias={other!r}: use 'uniform' or a number such as 0")
    if cfg["dtype"] not in DTYPES:
        raise RHNError(f"dtype={cfg['dtype']!r}: use float32 or float64")
    if cfg["rhn_impl"] not in RHN_IMPLS:
        raise RHNError(f"rhn_impl={cfg['rhn_impl']!r}: use one of {', '.join(RHN_IMPLS)}")
    if not isinstance(cfg["cuda_graphs"], bool):
        raise RHNError(f"cuda_graphs={cfg['cuda_graphs']!r}: use True or False")
    if cfg["precision"] not in PRECISIONS:
        raise RHNError(f"precision={cfg['precision']!r}: use one of {', '.join(PRECISIONS)}")
    if cfg["precision"] != "float32" and cfg["dtype"] != "float32":
        raise RHNError(f"precision={cfg['precision']} applies to float32 models: use dtype=float32 or precision=float32")
    if cfg["vocab_size"] < 0 or (cfg["vocab_size"] == 0 and cfg["dataset"] != "chars"):
        raise RHNError(f"vocab_size={cfg['vocab_size']!r} must be positive for dataset={cfg['dataset']}")
    if not is_count(cfg["sample_length"]):
        raise RHNError(f"sample_length={cfg['sample_length']!r} must be a positive integer (symbols to write)")
    if not (is_number(cfg["temperature"]) and cfg["temperature"] > 0):
        raise RHNError(f"temperature={cfg['temperature']!r} must be a positive number: 1 samples the model as it "
                       f"is, lower is more predictable")
    if not isinstance(cfg["sample_prime"], str):
        raise RHNError(f"sample_prime={cfg['sample_prime']!r} must be text, e.g. sample_prime='Alice was'")
    if not (isinstance(cfg["threads"], int) and not isinstance(cfg["threads"], bool) and cfg["threads"] >= 0):
        raise RHNError(f"threads={cfg['threads']!r}: use a number of CPU threads, or 0 for OMP_NUM_THREADS / all cores")
    if not isinstance(cfg["sample_at_end"], bool):
        raise RHNError(f"sample_at_end={cfg['sample_at_end']!r}: use True or False")


def lr_at(cfg, epoch):
    """Learning rate of 1-based ``epoch``: lr / lr_decay^max(epoch - max_epoch, 0)."""
    return cfg["learning_rate"] / cfg["lr_decay"] ** max(epoch - cfg["max_epoch"], 0)
