"""Settings as the processes read them (core/settings.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.settings import Settings


def test_a_relative_data_dir_is_made_absolute_where_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Paths under DATA_DIR go to the sandbox, which refuses relative ones: a hidden-test run
    under `.data/acceptance` failed with "bwrap: Can't find source path"."""
    monkeypatch.chdir(tmp_path)
    settings = Settings(_env_file=None, data_dir=Path(".data"))
    assert settings.data_dir == tmp_path / ".data" and settings.data_dir.is_absolute()
    assert Settings(_env_file=None, data_dir=Path("~/x")).data_dir == Path(
        os.path.expanduser("~/x")
    )
