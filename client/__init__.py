"""What runs against a Temporal server: the operations on builds that starter.py and the API
share (builds.py), and the worker that serves builds (worker.py)."""
