"""`run_app`: the one call a CLI makes to run an app under the supervisor.

    from shoal.shards.options import supervisor_options, SupervisorOptions
    from shoal.shards.runner import run_app

    @click.command()
    @supervisor_options
    @click.option("--node-name", ...)
    def run(supervisor: SupervisorOptions, node_name: str) -> None:
        sys.exit(run_app(lambda: ZtunnelApp(node_name=node_name), supervisor))
"""

from __future__ import annotations

import os
from typing import Callable

from shoal.core import log as core_log
from shoal.shards import exitcodes, standby
from shoal.shards.app import App
from shoal.shards.options import SupervisorOptions
from shoal.shards.supervisor import Supervisor


def run_app(app_factory: Callable[[], App], options: SupervisorOptions) -> int:
    """Build the app (pre-fork) and supervise its workers until stopped.

    Returns:
        A documented exit code (shards/exitcodes.py): 0 after a clean stop.
    """
    core_log.setup(options.log_level)
    log = core_log.get("supervisor")
    try:
        app = app_factory()
    except Exception as e:
        log.error(f"cannot load the app: {e}", exc_info=True,
                  extra={"fields": {"exit_code": exitcodes.APP_LOAD_ERROR}})
        return exitcodes.APP_LOAD_ERROR
    if os.environ.pop(standby.ENV, ""):
        standby.preload()
        standby.await_go()
        log.info("standby activated")
    return Supervisor(app, options).run()
