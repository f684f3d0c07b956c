"""Activities: all I/O of a build (model calls, and later workspace, tests, release, mirror)."""
