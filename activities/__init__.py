"""Activities: all I/O of a build: model calls, the workspace, test runs, releases, the mirror."""
