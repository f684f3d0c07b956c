"""docker-compose.yml cannot run here (no Docker engine); check what can be checked."""

from __future__ import annotations

from pathlib import Path

import yaml

from core.models import SEARCH_ATTRIBUTES
from core.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
OUR_SERVICES = ("worker",)


def test_every_variable_our_services_set_is_a_setting():
    fields = {name.upper() for name in Settings.model_fields}
    for service in OUR_SERVICES:
        env = COMPOSE["services"][service]["environment"]
        unknown = sorted(set(env) - fields)
        assert not unknown, f"{service} sets variables no setting reads: {unknown}"


def test_worker_reaches_the_temporal_service_on_its_port():
    env = COMPOSE["services"]["worker"]["environment"]
    host, port = env["TEMPORAL_ADDRESS"].split(":")
    assert host in COMPOSE["services"]
    assert f"{port}:{port}" in COMPOSE["services"]["temporal"]["ports"]
    assert env["TEMPORAL_TASK_QUEUE"] == Settings.model_fields["temporal_task_queue"].default


def test_server_registers_the_search_attributes_the_workflow_upserts():
    command = COMPOSE["services"]["temporal"]["command"]
    registered = {arg.split("=", 1)[1] for arg in command if arg.startswith("--search-attribute=")}
    assert registered == {f"{k}={v}" for k, v in SEARCH_ATTRIBUTES.items()}
