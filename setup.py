"""trajax: training trajectories of language models across scales, in JAX."""
import setuptools

setuptools.setup(
    name="trajax",
    version="0.1.0",
    description=
    "Score every checkpoint of a pre-training trajectory and analyse it (Xia et al. 2023).",
    packages=setuptools.find_packages(include=["trajax", "trajax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.7",
        "flax>=0.11",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "tensorstore>=0.1.70",
        "transformers>=4.45",
        "tokenizers>=0.20",
        "safetensors>=0.4",
        "ml_dtypes>=0.4",
        "numpy>=1.26",
        "scipy>=1.11",
        "absl-py>=2.1",
        "ml_collections>=0.1.1",
        "matplotlib>=3.8",
        "tqdm>=4.66",
    ],
    extras_require={
        # torch is the parity reference; 2.13.0 is the CPU wheel on the dev/CI disk.
        "test": [
            "torch==2.13.0", "pytest>=8", "pytest-xdist>=3.6", "statsmodels>=0.14",
            "hypothesis>=6.100", "yapf==0.43.0"
        ],
    },
)
