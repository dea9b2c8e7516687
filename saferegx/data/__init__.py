"""The embedded default model and the harmful/benign prompt sets, fetched from PyPI wheels."""

from .models import DEFAULT_MODEL, default_model_path, load_model
from .prompts import benign_prompts, default_split, harmful_prompts, labeled_prompts, load_prompts

__all__ = [
    "DEFAULT_MODEL",
    "benign_prompts",
    "default_model_path",
    "default_split",
    "harmful_prompts",
    "labeled_prompts",
    "load_model",
    "load_prompts",
]
