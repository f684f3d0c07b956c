"""What runs against a Temporal server: the operations on builds, projects, re-runs and
evaluations that the CLI and the API share (builds.py: typed handles and updates)."""
