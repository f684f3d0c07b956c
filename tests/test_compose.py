"""docker-compose.yml cannot run here (no Docker engine): check what can be checked. It parses;
the variables it sets are ones the settings read; its ports, databases, start-up conditions and
search attributes agree with the code; and the namespace set-up script runs for real."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import tomllib
import uuid
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from temporalio.client import Client

from core.attributes import SEARCH_ATTRIBUTE_LIMITS, SEARCH_ATTRIBUTES
from core.settings import Settings
from devtools.devserver import temporal_binary

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
SERVICES: dict[str, Any] = COMPOSE["services"]
OUR_SERVICES = ("worker", "api")
SETTINGS = {name.upper() for name in Settings.model_fields}
DEFAULTS = dict(re.findall(r"\$\{(\w+):-([^}]*)\}", COMPOSE_TEXT))


def env_example() -> dict[str, str]:
    lines = (ROOT / ".env.example").read_text().splitlines()
    pairs = [line.split("=", 1) for line in lines if line.strip() and not line.startswith("#")]
    return {k.strip(): v.strip() for k, v in pairs}


def resolved(value: object) -> str:
    """A compose value with ${X:-default} replaced by its default."""
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: m.group(2), str(value))


def published(service: str) -> dict[int, int]:
    """container port -> host port."""
    pairs = (str(p).split(":")[-2:] for p in SERVICES[service].get("ports", []))
    return {int(c): int(h) for h, c in pairs}


def test_nothing_is_published_beyond_loopback_and_temporal_not_at_all():
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
    assert "ports" not in SERVICES["temporal"] and "7233" in SERVICES["temporal"]["expose"]
    # The API listens on its container's every address: compose will not start it keyless.
    assert "--host" in SERVICES["api"]["command"] and "0.0.0.0" in SERVICES["api"]["command"]
    assert SERVICES["api"]["environment"]["API_KEY"].startswith("${API_KEY:?")


def test_the_stack_has_every_part():
    assert set(SERVICES) == {
        "postgres", "temporal-schema", "temporal", "temporal-setup", "temporal-ui",
        "api", "worker", "prometheus", "jaeger",
    }  # fmt: skip
    assert "auto-setup" not in COMPOSE_TEXT  # deprecated image: server + admin-tools instead
    assert SERVICES["temporal"]["image"].startswith("temporalio/server:")
    for one_shot in ("temporal-schema", "temporal-setup"):
        assert SERVICES[one_shot]["image"].startswith("temporalio/admin-tools:")


def unread_variables(services: dict[str, Any]) -> dict[str, list[str]]:
    """Per service of ours, the variables it sets that no setting reads."""
    found = {s: sorted(set(services[s]["environment"]) - SETTINGS) for s in OUR_SERVICES}
    return {s: names for s, names in found.items() if names}


def test_every_variable_our_services_set_is_a_setting():
    assert unread_variables(SERVICES) == {}


def test_the_check_catches_a_variable_no_setting_reads():
    broken = yaml.safe_load(COMPOSE_TEXT)["services"]
    broken["worker"]["environment"]["WORKER_CONCURRENCY"] = "8"  # a typo'd setting
    assert unread_variables(broken) == {"worker": ["WORKER_CONCURRENCY"]}


def test_env_example_documents_every_compose_variable_and_nothing_else():
    documented = env_example()
    used = set(DEFAULTS)
    assert used <= set(documented), f"undocumented: {sorted(used - set(documented))}"
    unknown = set(documented) - used - SETTINGS
    assert not unknown, f".env.example names what nothing reads: {sorted(unknown)}"
    for name, value in documented.items():  # the example and the compose defaults agree
        if name in DEFAULTS and value:
            assert DEFAULTS[name] == value, name


def test_worker_and_api_reach_temporal_and_the_same_mirror():
    server_env = SERVICES["temporal"]["environment"]
    for service in OUR_SERVICES:
        env = {k: resolved(v) for k, v in SERVICES[service]["environment"].items()}
        host, port = env["TEMPORAL_ADDRESS"].split(":")
        assert host == "temporal" and port in SERVICES["temporal"]["expose"]
        assert env["TEMPORAL_TASK_QUEUE"] == Settings.model_fields["temporal_task_queue"].default
        db = urlparse(env["DATABASE_URL"])
        pg = {k: resolved(v) for k, v in SERVICES[db.hostname or ""]["environment"].items()}
        assert db.path == f"/{pg['POSTGRES_DB']}"
        assert (db.username, db.password) == (pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"])
        # The Web UI link the API and starter print opens the UI container's published port.
        ui = urlparse(env["TEMPORAL_UI_URL"])
        assert published("temporal-ui")[8080] == ui.port
    assert server_env["POSTGRES_SEEDS"] == "postgres"
    assert resolved(server_env["POSTGRES_PWD"]) == resolved(
        SERVICES["postgres"]["environment"]["POSTGRES_PASSWORD"]
    )
    urls = {SERVICES[s]["environment"]["DATABASE_URL"] for s in OUR_SERVICES}
    assert len(urls) == 1


def test_the_api_and_the_workers_share_the_credential_store():
    """The API keeps a registered URL's token in GIT_CREDENTIALS_FILE; the workers' git reads
    it there: the same file, on a volume both mount, and nothing else of the workers'."""
    stores = set()
    for service in OUR_SERVICES:
        store = Path(SERVICES[service]["environment"]["GIT_CREDENTIALS_FILE"])
        mounts = dict(v.split(":")[::-1] for v in SERVICES[service]["volumes"])
        stores.add((mounts[str(store.parent)], store))
    assert len(stores) == 1 and "build-data" not in {
        m.split(":")[0] for m in SERVICES["api"]["volumes"]
    }


def test_ports_agree_with_commands_healthchecks_and_scrapes():
    api = SERVICES["api"]
    port = int(api["command"][api["command"].index("--port") + 1])
    assert published("api") == {port: port} and f":{port}/readyz" in str(api["healthcheck"])
    worker = SERVICES["worker"]
    metrics_port = int(worker["environment"]["WORKER_METRICS_ADDRESS"].rsplit(":", 1)[1])
    assert worker["environment"]["WORKER_METRICS_ADDRESS"].startswith("0.0.0.0:")
    assert str(metrics_port) in worker["expose"] and f":{metrics_port}/metrics" in str(
        worker["healthcheck"]
    )
    assert "ports" not in worker  # replicas would fight over a published port
    scrape = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in scrape["scrape_configs"]}
    assert jobs["qao-worker"]["dns_sd_configs"][0] == {
        "names": ["worker"], "type": "A", "port": metrics_port
    }  # fmt: skip
    assert jobs["qao-api"]["static_configs"][0]["targets"] == [f"api:{port}"]


def test_start_up_order_waits_on_health_and_one_shots():
    for name, service in SERVICES.items():
        for dependency, spec in service.get("depends_on", {}).items():
            condition = spec["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in SERVICES[dependency], (name, dependency)
            else:
                assert condition == "service_completed_successfully"
                assert dependency in ("temporal-schema", "temporal-setup"), (name, dependency)
    assert set(SERVICES["temporal"]["depends_on"]) == {"temporal-schema"}
    for service in ("api", "worker"):
        assert SERVICES[service]["depends_on"]["temporal-setup"]["condition"] == (
            "service_completed_successfully"
        )


def test_the_set_up_registers_the_search_attributes_the_workflow_upserts():
    pairs = SERVICES["temporal-setup"]["environment"]["SEARCH_ATTRIBUTES"].split()
    assert dict(p.split("=") for p in pairs) == SEARCH_ATTRIBUTES


def test_search_attributes_fit_sql_visibility_limits():
    """The dev server and PostgreSQL visibility refuse to start past these (3 Int, ...)."""
    for kind, count in Counter(SEARCH_ATTRIBUTES.values()).items():
        assert count <= SEARCH_ATTRIBUTE_LIMITS[kind], f"{count} {kind} search attributes"


def test_the_server_is_the_version_the_tests_run_against():
    """compose pins the Temporal server the embedded dev server (which CI uses) bundles."""
    out = subprocess.run(
        [str(temporal_binary()), "--version"], capture_output=True, text=True, check=True
    ).stdout
    server, ui = re.search(r"Server ([\d.]+), UI ([\d.]+)", out).groups()  # type: ignore[union-attr]
    assert DEFAULTS["TEMPORAL_VERSION"] == server and DEFAULTS["TEMPORAL_UI_VERSION"] == ui


def test_mounted_files_exist_and_scripts_parse():
    for service in SERVICES.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source
    for script in (ROOT / "deploy/temporal").glob("*.sh"):
        subprocess.run(["sh", "-n", str(script)], check=True)
    dockerfile = (ROOT / "Dockerfile").read_text()
    # Every package and module pyproject.toml installs is in the image.
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {name.split(".")[0] for name in setuptools["packages"]}
    for package in packages:
        assert f"COPY {package} {package}" in dockerfile
    copied = {
        f for line in re.findall(r"^COPY ([\w. ]+) \./$", dockerfile, re.M) for f in line.split()
    }
    assert {f"{m}.py" for m in setuptools["py-modules"]} <= copied
    # byte-compiled at build time: the non-root worker cannot write __pycache__ under /app
    compiled = re.search(r"python -m compileall -q ([\w. ]+)", dockerfile)
    assert compiled is not None and set(packages) <= set(compiled.group(1).split())
    assert dockerfile.index("compileall") < dockerfile.index("USER ")
    assert "git" in dockerfile  # workspaces are git repositories


@pytest.mark.parametrize("runs", [2])
async def test_the_namespace_set_up_script_runs_for_real_and_twice(
    temporal_address: str, client: Client, runs: int
):
    namespace = f"setup-{uuid.uuid4().hex[:8]}"
    env = os.environ | {
        "TEMPORAL_ADDRESS": temporal_address,
        "TEMPORAL_NAMESPACE": namespace,
        "SEARCH_ATTRIBUTES": SERVICES["temporal-setup"]["environment"]["SEARCH_ATTRIBUTES"],
        "TEMPORAL_CLI": str(temporal_binary()),
    }
    script = ROOT / "deploy/temporal/setup-namespace.sh"
    for _ in range(runs):  # again on a set-up namespace: a no-op, not an error
        proc = await asyncio.create_subprocess_exec(
            "sh", str(script), env=env, stdout=asyncio.subprocess.PIPE, stderr=subprocess.STDOUT
        )
        out, _ = await proc.communicate()
        assert proc.returncode == 0, out.decode()
    from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest

    listed = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    kinds = {"Keyword": 2, "Int": 3, "Double": 4}  # IndexedValueType numbers
    assert {k: v for k, v in listed.custom_attributes.items() if k in SEARCH_ATTRIBUTES} == {
        name: kinds[kind] for name, kind in SEARCH_ATTRIBUTES.items()
    }


def test_the_worker_gets_what_its_sandbox_needs_or_falls_back():
    worker = SERVICES["worker"]
    sandbox = resolved(worker["environment"]["SANDBOX"])
    assert sandbox == "auto"  # bubblewrap where the host lets it unshare, else landlock
    assert sandbox in Settings.model_fields["sandbox"].annotation.__args__  # type: ignore[union-attr]
    # What bwrap needs inside a container: Docker's default profiles refuse CLONE_NEWUSER.
    assert {"seccomp=unconfined", "apparmor=unconfined"} <= set(worker["security_opt"])
    assert int(worker["pids_limit"]) >= 1024  # a bound where no run cgroup can be made
    assert resolved(worker["environment"]["SANDBOX_SETUP_NETWORK"]) == "false"
