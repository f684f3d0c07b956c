"""A repository URL with a token in it: the token goes to git's credential store (a file only
its owner reads) and nowhere else. The registration, its memo, the builds' histories and the
workspace's git config hold the URL without it, and the worker's git still reads the
repository from an http server that asks for the token."""

from __future__ import annotations

import base64
import functools
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from temporalio.client import Client

from activities.repository.gitcmd import git
from client.credentials import keep_credentials
from client.projects import ProjectRefused, put_project, registered
from core.projects import ProjectConfig, project_workflow_id, split_credentials
from core.settings import Settings
from tests.git_projects import make_project
from tests.helpers import make_request, start, wait_until

USER, TOKEN = "ci-bot", "s3cret-token-5f1e"


@pytest.mark.parametrize(
    ("url", "clean", "kept"),
    [
        ("https://ci-bot:tok@example.com/o/r.git", "https://example.com/o/r.git", True),
        ("https://ghp_abc@example.com/o/r.git", "https://example.com/o/r.git", True),
        ("HTTP://u:p@10.0.0.1:8080/r", "HTTP://10.0.0.1:8080/r", True),
        ("https://example.com/o/r.git", "https://example.com/o/r.git", False),
        ("ssh://git@example.com/o/r.git", "ssh://git@example.com/o/r.git", False),
        ("git@example.com:o/r.git", "git@example.com:o/r.git", False),
        ("/srv/repos/r.git", "/srv/repos/r.git", False),
    ],
)
def test_only_http_credentials_are_split_off(url: str, clean: str, kept: bool) -> None:
    assert split_credentials(url) == (clean, url if kept else None)


def test_the_store_keeps_one_line_per_repository_readable_by_its_owner_only(tmp_path: Path):
    store = tmp_path / "data" / "git-credentials"
    one, other = "https://example.com/o/one.git", "https://example.com/o/other.git"
    assert keep_credentials(store, one, "https://a:1@example.com/o/one.git") is None
    keep_credentials(store, other, "https://b:2@example.com/o/other.git")
    before = keep_credentials(store, one, "https://a:3@example.com/o/one.git")
    assert before == "https://a:1@example.com/o/one.git"
    assert store.read_text().splitlines() == [
        "https://b:2@example.com/o/other.git",
        "https://a:3@example.com/o/one.git",
    ]
    assert store.stat().st_mode & 0o777 == 0o600
    keep_credentials(store, one, None)
    assert store.read_text().splitlines() == ["https://b:2@example.com/o/other.git"]


class GitOverHttp:
    """git's "dumb" http protocol over a folder of bare repositories, for requests that carry
    USER and TOKEN (Basic auth); others get 401, as a forge answers a private repository."""

    def __init__(self, root: Path) -> None:
        expected = "Basic " + base64.b64encode(f"{USER}:{TOKEN}".encode()).decode()
        self.served = 0
        outer = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.headers.get("Authorization") != expected:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="git"')
                    self.end_headers()
                    return
                outer.served += 1
                super().do_GET()

            def log_message(self, *args: object) -> None:
                pass

        handler = functools.partial(Handler, directory=str(root))
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def forge(tmp_path: Path) -> Iterator[tuple[GitOverHttp, str]]:
    remote = make_project(tmp_path)
    git(remote, "update-server-info")  # what the dumb protocol reads
    server = GitOverHttp(tmp_path)
    yield server, f"http://127.0.0.1:{server.port}/remote.git"
    server.close()


async def test_a_token_in_a_repository_url_lives_only_in_the_credential_store(
    client: Client, worker: Settings, forge: tuple[GitOverHttp, str]
):
    server, clean = forge
    project = f"p-cred-{server.port}"
    with_token = clean.replace("http://", f"http://{USER}:{TOKEN}@")
    view = await put_project(client, worker, project, ProjectConfig(repository=with_token))
    assert view.config.repository == clean and server.served > 0  # git read it, with the token
    assert worker.git_credentials.stat().st_mode & 0o777 == 0o600
    assert TOKEN in worker.git_credentials.read_text()

    handle = await start(
        client, worker, make_request(project=project, approval_gates=["handoff_to_coder"])
    )
    await wait_until(handle, lambda s: s.waiting_for is not None)  # its workspace is a clone
    shown = await registered(client, project)
    registry = client.get_workflow_handle(project_workflow_id(project))
    try:
        assert shown is not None and shown.config.repository == clean
        for history in (await handle.fetch_history(), await registry.fetch_history()):
            assert TOKEN not in history.to_json()
        repo = worker.workspaces / handle.id.removeprefix("build-") / "repo"
        assert git(repo, "remote", "get-url", "origin") == clean
        assert TOKEN not in (repo / ".git" / "config").read_text()
    finally:
        await handle.terminate("the test is done")

    # A wrong token is refused with git's reason, and the store keeps the one that works.
    wrong = clean.replace("http://", f"http://{USER}:wrong@")
    with pytest.raises(ProjectRefused) as refused:
        await put_project(client, worker, project, ProjectConfig(repository=wrong))
    assert "wrong" not in str(refused.value)
    kept = worker.git_credentials.read_text()
    mine = [line for line in kept.splitlines() if str(server.port) in line]
    assert len(mine) == 1 and TOKEN in mine[0] and "wrong" not in kept
