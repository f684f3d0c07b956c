"""Delivery into a project: what the Release Manager's activity does (landing: land the tested
commit, deploy it, revert it), the git side of moving the project's branch and tags (pushes),
and where releases go (targets)."""
