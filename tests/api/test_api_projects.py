"""Projects over HTTP: register (git checks the repository), read, list; a build of a
registered project shows where it stands in the repository, and the stats list versions."""

from __future__ import annotations

from pathlib import Path

from activities.repository.gitcmd import git
from tests.api_stack import Stack, new_project, poll
from tests.git_projects import make_project


async def test_register_read_and_list_projects_over_http(stack: Stack, tmp_path: Path):
    http, project = stack.http, new_project()
    remote = make_project(tmp_path)
    put = await http.put(f"/api/projects/{project}", json={"repository": str(remote)})
    assert put.status_code == 200, put.text
    assert put.json()["head"] == git(remote, "rev-parse", "main")
    assert put.json()["config"]["test_command"] == "python -m pytest"
    one = await http.get(f"/api/projects/{project}")
    assert one.status_code == 200 and one.json()["config"]["repository"] == str(remote)
    listed = await http.get("/api/projects")
    assert project in {p["project_id"] for p in listed.json()}

    refused = await http.put(
        f"/api/projects/{project}", json={"repository": str(remote), "branch": "nope"}
    )
    assert refused.status_code == 422 and "has no branch 'nope'" in refused.json()["detail"]
    assert (await http.get(f"/api/projects/{project}")).json()["config"]["branch"] == "main"
    missing = new_project()
    gone = await http.put(f"/api/projects/{missing}", json={"repository": "/nowhere/x.git"})
    assert gone.status_code == 422 and "/nowhere/x.git" in gone.json()["detail"]
    assert (await http.get(f"/api/projects/{missing}")).status_code == 404
    relative = await http.put(f"/api/projects/{missing}", json={"repository": "x.git"})
    assert relative.status_code == 422  # a field error, before git is asked
    assert (await http.get("/api/projects/bad%20id")).status_code == 422


async def test_a_build_shows_where_it_stands_in_the_repository(stack: Stack, tmp_path: Path):
    http, project = stack.http, new_project()
    remote = make_project(tmp_path)
    base = git(remote, "rev-parse", "main")
    await http.put(f"/api/projects/{project}", json={"repository": str(remote)})
    started = await http.post(
        f"/api/workflows/{project}/start", json={"requirements": {"feature": "CSV export"}}
    )
    assert started.status_code == 201, started.text
    status_url = started.json()["status_url"]
    done = await poll(http, status_url, lambda s: s["current_state"] == "complete")
    repo = done["repository"]
    landed = git(remote, "rev-parse", "main")
    assert repo["repository"] == str(remote) and repo["branch"] == "main"
    assert repo["base"] == base and repo["build_branch"] == f"build/{started.json()['build_id']}"
    assert (repo["version"], repo["delivered"], repo["delivery"]) == ("v0.1.0", landed, "merge")
    stats = await http.get(f"/api/workflows/project/{project}/stats")
    versions = stats.json()["versions"]
    assert [(v["version"], v["commit"]) for v in versions] == [("v0.1.0", landed)]
    assert versions[0]["tokens"] > 0
