"""The command line (starter.py): a typer command for everything a person does, printed
with rich. Temporal operations are in client/, which these commands call."""
