"""prefjax: preference learning of language models in JAX."""
from setuptools import find_packages, setup

setup(
    name="prefjax",
    version="0.1.0",
    description="Preference learning of language models in JAX/Flax NNX.",
    packages=find_packages(include=["prefjax", "prefjax.*"]),
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.7",
        "flax>=0.12",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        "grain>=0.2.12",
        "tensorflow-datasets>=4.9.9",
        "array-record>=0.8",
        "etils",                  # tfds without TensorFlow needs these two
        "importlib_resources",
        "ml-collections>=1.0",
        "absl-py",
        "tqdm",
        "numpy",
        "tensorboardX",
        "matplotlib",
        "safetensors",
        "ml_dtypes",
    ],
    extras_require={
        "test": ["pytest", "pytest-xdist"],   # the suite runs on 2 workers (pytest.ini)
        # executing experiments/notebooks/ (tests/notebooks/test_notebooks.py)
        "notebooks": ["nbclient", "nbformat", "ipykernel"],
        "calibration": ["statsmodels", "scipy"],
        "tasks": ["reasoning-gym"],   # verifiable tasks (data spec "tasks:NAME,...")
        "hf": ["datasets"],           # Hugging Face datasets (data spec "hf:PATH")
        "wandb": ["wandb"],           # Weights & Biases logging (config.wandb)
        # scripts/benchmark_*.py only: TRL's trainers and transformers' generate side by side
        # (torch pinned exactly; accelerate: transformers' from_pretrained(gguf_file=...)
        # requires it; datasets: TRL's input). No tunix worker: it pins its own jax/flax.
        "bench": ["torch==2.13.0", "transformers", "accelerate", "trl==1.16.0", "datasets"],
        # The references that parity tests and scripts/check_export.py compare prefjax with:
        # transformers' torch models (torch pinned exactly; accelerate as in bench). Nothing
        # under prefjax/ imports torch or accelerate.
        "parity": ["torch==2.13.0", "transformers", "accelerate"],
        # Real checkpoints (HF directories, GGUF files), their tokenizers and chat templates,
        # without torch. transformers: its GGUF tokenizer converter (sentencepiece vocabularies
        # such as Gemma's); it runs without torch.
        "real": ["transformers", "tokenizers", "safetensors", "gguf", "jinja2"],
    },
)
