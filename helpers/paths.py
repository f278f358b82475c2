"""Where the kit keeps things: the repository, its models and its outputs.

Both folders can be moved with environment variables, so a class can share one
models folder and a test can write into a temporary one.
"""

from __future__ import annotations

import os
from pathlib import Path

MODELS_ENV = "KOLORS_KIT_MODELS"
OUTPUTS_ENV = "KOLORS_KIT_OUTPUTS"


def repo_root() -> Path:
    """The kit's repository folder (the parent of ``helpers/``)."""
    return Path(__file__).resolve().parents[1]


def models_dir() -> Path:
    """Folder holding model weights: ``$KOLORS_KIT_MODELS`` or ``<repo>/models``."""
    return Path(os.environ.get(MODELS_ENV) or repo_root() / "models").expanduser().resolve()


def outputs_dir() -> Path:
    """Folder for everything the course produces: ``$KOLORS_KIT_OUTPUTS`` or ``<repo>/outputs``."""
    return Path(os.environ.get(OUTPUTS_ENV) or repo_root() / "outputs").expanduser().resolve()


def data_dir() -> Path:
    """The small files the course ships (storyboards, recipes, templates)."""
    return repo_root() / "data"
