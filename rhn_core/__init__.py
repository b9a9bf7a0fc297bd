"""rhn: Recurrent Highway Network language models (Zilly et al., arXiv 1607.03474).

The shared, framework-free core: configs (``hyperparams``), data (``readers``),
dropout masks (``masks``), canonical parameters (``params``), the NumPy oracle
(``reference``), checkpoints (``checkpoint``) and the training loop (``loop``).
Frameworks live in ``rhn_core.backends`` and are imported only when used.
"""

import warnings

__version__ = "0.1.0"

# Sacred 0.8.7 imports pkg_resources, whose deprecation warning would open every run's output.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
