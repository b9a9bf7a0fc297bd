"""Train, evaluate or sample a Recurrent Highway Network language model (Zilly et al.,
arXiv 1607.03474) with TensorFlow 2 / Keras 3. rhn_train_torch.py does the same with PyTorch; the two
read and write the same checkpoints.

Examples:
  python rhn_train_tf.py with demo                  train on Alice in Wonderland (about a minute)
  python rhn_train_tf.py with ptb_sota data_path=DIR    the paper's PTB model (DIR: ptb.*.txt)
  python rhn_train_tf.py with ptb_sota depth=5      change any key after with
  python rhn_train_tf.py print_config with ptb_sota     every key, commented
  python rhn_train_tf.py evaluate with demo load_model=runs/chars_1/best.npz
  python rhn_train_tf.py sample with demo load_model=runs/chars_1/best.npz sample_prime=Alice
  python rhn_train_tf.py with demo resume=runs/chars_1/last.npz
  python rhn_train_tf.py -F sacred_runs with demo   record the run (-m HOST:PORT:DB for MongoDB)
"""

from rhn_core.experiment import make_experiment

ex = make_experiment("tf")

if __name__ == "__main__":
    ex.run_commandline()
