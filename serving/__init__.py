"""The worker process: how it starts (main.py: the sandbox, the database, the metrics, the
signals), what it serves (assembly.py: BuildWorkflow and the registry's and evaluations'
workflows with the activities of their contracts, their clients built once) and the
reconciler every worker runs beside its polling (reconcile.py)."""
