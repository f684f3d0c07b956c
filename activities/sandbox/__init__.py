"""The sandbox of generated code: a typed policy of what one run may touch (policy), turned into
bubblewrap's argv (bubblewrap) or Landlock and seccomp rules (landlock, applied inside the run
by confine), a pids cgroup per run (cgroups), the choice of mechanism for the process
(isolation), and the run itself with its limits and scrubbed environment (runs)."""
