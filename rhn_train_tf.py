"""Train or evaluate an RHN language model with the TensorFlow 2 backend.

    python rhn_train_tf.py with demo
    python rhn_train_tf.py with ptb_sota depth=20
    python rhn_train_tf.py print_config with text8_sota
    python rhn_train_tf.py evaluate with ptb_sota load_model=runs/ptb_1/best.npz
    python rhn_train_tf.py with ptb_sota resume=runs/ptb_1/last.npz

Checkpoints are the same .npz files as the PyTorch backend's: either backend
evaluates or resumes what the other wrote.
"""
from rhn_core.experiment import make_experiment

ex = make_experiment("tf")

if __name__ == "__main__":
    ex.run_commandline()
