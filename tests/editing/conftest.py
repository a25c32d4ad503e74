"""Fixtures: a tiny random Larimar model saved once per session, and the loaded API object."""

from __future__ import annotations

from pathlib import Path

import pytest

import larimar
from tests.editing.tiny_larimar import save_tiny_larimar


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_larimar(tmp_path_factory.mktemp("tiny-larimar"))


@pytest.fixture(scope="session")
def lm(model_dir: Path) -> larimar.Larimar:
    return larimar.load(model_dir)


@pytest.fixture(scope="session")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> larimar.Larimar:
    """A tiny model with the built-in model's modes and channels (see tiny_shipped.py)."""
    from tests.editing.tiny_shipped import save_tiny_shipped

    return larimar.load(save_tiny_shipped(tmp_path_factory.mktemp("tiny-shipped")))
