"""Test set-up: the whole suite runs on the offline random set, never the network."""

import os

# Before anything imports helpers.models: tests never use (or download) real weights.
os.environ["KOLORS_KIT_WEIGHTS"] = "offline"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def course_outputs(tmp_path_factory):
    """One outputs folder shared by the notebooks, in order (02 writes what 03 reads)."""
    return tmp_path_factory.mktemp("outputs")
