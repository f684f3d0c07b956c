"""docker-compose.yml cannot run here (no Docker engine); check what can be checked."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import yaml

from core.models import SEARCH_ATTRIBUTE_LIMITS, SEARCH_ATTRIBUTES
from core.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
OUR_SERVICES = ("worker", "api")


def test_every_variable_our_services_set_is_a_setting():
    fields = {name.upper() for name in Settings.model_fields}
    for service in OUR_SERVICES:
        env = COMPOSE["services"][service]["environment"]
        unknown = sorted(set(env) - fields)
        assert not unknown, f"{service} sets variables no setting reads: {unknown}"


def test_worker_and_api_reach_temporal_and_the_same_mirror():
    for service in OUR_SERVICES:
        env = COMPOSE["services"][service]["environment"]
        host, port = env["TEMPORAL_ADDRESS"].split(":")
        assert host in COMPOSE["services"]
        assert f"{port}:{port}" in COMPOSE["services"]["temporal"]["ports"]
        assert env["TEMPORAL_TASK_QUEUE"] == Settings.model_fields["temporal_task_queue"].default
        db_host = env["DATABASE_URL"].split("@", 1)[1].split(":", 1)[0]
        assert COMPOSE["services"][db_host]["environment"]["POSTGRES_DB"] in env["DATABASE_URL"]
    urls = {COMPOSE["services"][s]["environment"]["DATABASE_URL"] for s in OUR_SERVICES}
    assert len(urls) == 1


def test_the_api_listens_where_its_port_is_published():
    api = COMPOSE["services"]["api"]
    port = api["command"][api["command"].index("--port") + 1]
    assert f"{port}:{port}" in api["ports"] and port in str(api["healthcheck"]["test"])


def test_the_image_contains_every_package_the_code_imports():
    dockerfile = (ROOT / "Dockerfile").read_text()
    for package in ("core", "workflows", "activities", "api", "db"):
        assert f"COPY {package} {package}" in dockerfile


def test_server_registers_the_search_attributes_the_workflow_upserts():
    command = COMPOSE["services"]["temporal"]["command"]
    registered = {arg.split("=", 1)[1] for arg in command if arg.startswith("--search-attribute=")}
    assert registered == {f"{k}={v}" for k, v in SEARCH_ATTRIBUTES.items()}


def test_search_attributes_fit_sql_visibility_limits():
    """The dev server and PostgreSQL visibility refuse to start past these (3 Int, ...)."""
    kinds = Counter(SEARCH_ATTRIBUTES.values())
    for kind, count in kinds.items():
        assert count <= SEARCH_ATTRIBUTE_LIMITS[kind], f"{count} {kind} search attributes"
