"""The SteerLM demo: ``config`` (the schema and its sizes), ``data`` (the run's files), ``stages`` (each
stage's
validated config), ``pipeline`` (``run_demo``: the four SteerLM steps, then steering), ``evaluate`` (the
sweep, its table and plot)."""
