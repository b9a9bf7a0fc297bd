"""The Sacred experiment, built the same way for every backend.

Both entry points (``rhn_train_torch.py``, ``rhn_train_tf.py``) call
``make_experiment`` with their backend's name, so they register the same config
scope, the same named configs and the same commands.
"""
from sacred import Experiment
from sacred.commands import print_config
from sacred.utils import apply_backspaces_and_linefeeds

from . import loop, mc
from .hyperparams import NAMED_CONFIGS, hyperparameters


def make_experiment(backend_name):
    """Experiment ``rhn_prediction`` (the original's name) driving ``backend_name``."""
    ex = Experiment("rhn_prediction", save_git_info=False)
    # Progress bars redraw with carriage returns; keep only their final state in
    # the captured output that observers store.
    ex.captured_out_filter = apply_backspaces_and_linefeeds
    ex.config(hyperparameters)
    for name, scope in NAMED_CONFIGS.items():
        ex.add_named_config(name, scope) if isinstance(scope, dict) else ex.named_config(scope)

    @ex.main
    def main(_config, _run):
        """Train, select the best epoch on validation, evaluate it on the full streams."""
        trainer = loop.Trainer(_config, backend_name, _run)  # bad config, data or checkpoint fail here
        print_config(_run)  # as the original's main does first
        return trainer.train()

    @ex.command
    def evaluate(_config, _run):
        """Score load_model: batched valid, full (B=1) valid and full test."""
        return loop.evaluate(_config, backend_name, _run)

    @ex.command
    def evaluate_mc(_config, _run):
        """MC-dropout test perplexity of load_model with mc_steps accepted samples."""
        return mc.evaluate_mc(_config, backend_name, _run)

    return ex
