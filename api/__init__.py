"""HTTP API over the mirror and the Temporal client (arrives with the mirror, issue 3)."""
