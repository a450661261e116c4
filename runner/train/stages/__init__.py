"""One module per stage, each `run(spec, run_dir) -> metrics`."""
