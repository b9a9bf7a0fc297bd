"""Train or evaluate an RHN language model with the PyTorch backend.

    python rhn_train_torch.py with demo
    python rhn_train_torch.py with ptb_sota data_path=/path/to/ptb
    python rhn_train_torch.py print_config with text8_sota
    python rhn_train_torch.py evaluate with ptb_sota load_model=runs/ptb_1/best.npz
    python rhn_train_torch.py with ptb_sota resume=runs/ptb_1/last.npz
"""
from rhn_core.experiment import make_experiment

ex = make_experiment("torch")

if __name__ == "__main__":
    ex.run_commandline()
