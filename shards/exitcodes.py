"""Exit codes: an API. Scripts, systemd units and Kubernetes read them.

Supervisor exit codes (what `shoal ztunnel run` and friends return):

| code | name | meaning |
|---|---|---|
| 0 | OK | clean stop (SIGTERM/SIGINT drain, SIGQUIT, /quitquitquit, or the old supervisor after a SIGUSR2 upgrade) |
| 1 | ERROR | unexpected error in the supervisor itself (a bug: the traceback is logged) |
| 2 | USAGE | bad command line (click's code) |
| 3 | BOOT_ERROR | workers failed to boot MAX_BOOT_FAILURES times in a row; halted instead of crash-looping |
| 4 | APP_LOAD_ERROR | the app could not be constructed before forking (bad app options) |
| 5 | CONFIG_ERROR | `--config` is unusable (missing directory, routing table unavailable) |
| 6 | SETUP_ERROR | the supervisor could not set itself up (shared memory, pidfile, temp dir) |

Worker exit codes (what the supervisor reads with waitpid):

| code | name | meaning |
|---|---|---|
| 0 | WORKER_OK | drained and exited as asked |
| 3 | WORKER_BOOT_ERROR | `App.start()` or the admin listeners failed; counts towards the halt |
| 70 | WORKER_CRASH | an uncaught exception after boot; the worker is restarted |
| 71 | WORKER_ORPHANED | the supervisor went away; the worker stopped itself |
"""

OK = 0
ERROR = 1
USAGE = 2
BOOT_ERROR = 3
APP_LOAD_ERROR = 4
CONFIG_ERROR = 5
SETUP_ERROR = 6

WORKER_OK = 0
WORKER_BOOT_ERROR = 3
WORKER_CRASH = 70
WORKER_ORPHANED = 71

NAMES = {OK: "OK", ERROR: "ERROR", USAGE: "USAGE", BOOT_ERROR: "BOOT_ERROR",
         APP_LOAD_ERROR: "APP_LOAD_ERROR", CONFIG_ERROR: "CONFIG_ERROR",
         SETUP_ERROR: "SETUP_ERROR"}


class SupervisorExit(Exception):
    """Raised inside the supervisor to stop with a documented exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
