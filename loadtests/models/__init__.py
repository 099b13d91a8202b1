"""Traffic models for the load tests (TOML), loaded by :func:`loadtests.scenario.load_model`."""
