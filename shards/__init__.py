"""shards: the supervisor and its per-core worker processes.

Run an app (a `shards.app.App`) in N forked workers, each on uvloop with its
own SO_REUSEPORT listeners:

    from shoal.shards.options import supervisor_options, SupervisorOptions
    from shoal.shards.runner import run_app
    sys.exit(run_app(lambda: MyApp(...), supervisor_options_value))

See docs/operations.md (signals, exit codes, flags, metrics) and
docs/internals.md (the App / WorkerContext contract).
"""
