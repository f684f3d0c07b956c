"""Tools for running this project's own stack: the Temporal dev server and child processes tied
to the process that started them. Used by devstack.py, the bench, the drills and the tests."""
