"""HTTP API: reads builds from the mirror, steers them through the Temporal client."""
