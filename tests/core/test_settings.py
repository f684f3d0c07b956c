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


def test_the_embedded_servers_port_is_where_clients_go_unless_told_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """TEMPORAL_PORT moved the server but not TEMPORAL_ADDRESS: the CLI spoke to another server
    on 7233 and answered "no build"."""
    monkeypatch.delenv("TEMPORAL_ADDRESS", raising=False)
    monkeypatch.setenv("TEMPORAL_PORT", "17233")
    monkeypatch.setenv("TEMPORAL_UI_PORT", "18233")
    moved = Settings(_env_file=None)
    assert moved.temporal_address == "localhost:17233"
    assert moved.ui_link("build-x").startswith("http://localhost:18233/")
    monkeypatch.setenv("TEMPORAL_ADDRESS", "temporal.internal:7233")
    assert Settings(_env_file=None).temporal_address == "temporal.internal:7233"
    monkeypatch.delenv("TEMPORAL_PORT")
    monkeypatch.delenv("TEMPORAL_ADDRESS")
    assert Settings(_env_file=None).temporal_address == "localhost:7233"
