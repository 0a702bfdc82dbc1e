"""Lambda workers: specs, the process manager, and the in-child runtime."""
