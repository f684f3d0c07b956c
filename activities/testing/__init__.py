"""Running a project's own tooling on a workspace, in the sandbox: its environment made by its
setup command (environment), its tests with a baseline of the build's base (testrun), and the
Verification Overseer's static checks (checks)."""
