"""Packaging for rhn: the core needs NumPy, Sacred, tqdm, matplotlib and pymongo; frameworks are extras."""

from setuptools import find_packages, setup

EXTRAS = {
    "torch": ["torch>=2.1"],
    "tf": ["tensorflow>=2.16"],
    "mongo": ["pymongo>=4.6"],  # kept for older install lines; pymongo is now a core requirement
    # Fused CUDA kernels of the torch backend (rhn_impl=triton / auto on CUDA).
    "gpu": ["triton>=3.2"],
    "slurm": ["submitit>=1.5"],  # rhn-sweep --executor slurm
    # The suite starts a real MongoDB-protocol server of its own: SecantusDB (WiredTiger storage); it also
    # starts a Slurm cluster, driven through submitit.
    # triton 3.9.0: its interpreter runs the kernel tests on CPU (3.5.0's fails with numpy 2.4).
    "test": [
        "pytest>=7",
        "pytest-randomly>=3.12",  # each run in its own random order, reseeded per test (tested with 5.1.0)
        "secantusdb==0.7.0b3",
        "submitit>=1.5",
        "triton==3.9.0; platform_system == 'Linux' and platform_machine == 'x86_64'",
    ],
    "mutation": ["mutmut>=3.8"],  # tools/mutation.py (not part of CI)
    "docs": ["mkdocs==1.6.1", "mkdocs-material==9.8.2"],  # the docs site: mkdocs serve / mkdocs build --strict
}
EXTRAS["all"] = sorted({req for reqs in EXTRAS.values() for req in reqs})

setup(
    name="rhn",
    version="0.1.0",
    description="Recurrent Highway Network language models (Zilly et al. 2017) for PyTorch and TensorFlow 2",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(include=["rhn_core", "rhn_core.*"]),
    package_data={"rhn_core": ["demo_data/*.xz"]},
    py_modules=["rhn_train_torch", "rhn_train_tf"],
    install_requires=["numpy>=1.22", "sacred>=0.8.4", "tqdm>=4.60", "matplotlib>=3.5", "pymongo>=4.6", "setuptools<82"],
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["rhn-sweep = rhn_core.sweep.cli:main"]},
)
