"""agentsleep.daemon: scheduled consolidation for long-running assistants.

    from agentsleep.daemon import Daemon, request_sleep
    Daemon(["~/.agentsleep/alice"]).run_forever()     # what `agentsleep daemon run` does
    request_sleep("~/.agentsleep/alice")              # True: the running daemon will sleep now

Triggers per home come from its ``[daemon]`` config section (cron, threshold,
idle); on-demand requests arrive through files under ``<home>/daemon/``.
See service.py for the guarantees (one sleep per home, crash recovery, stop).
"""
from __future__ import annotations

from agentsleep.sleep.journal import abort_own, journals, recover
from .requests import daemon_info, request_result, request_sleep, submit_request, wait_request
from .runner import SleepAborted, SleepJob, SubprocessSleep, inprocess_sleep, load_target, worker_main
from .service import Daemon, DaemonAlreadyRunning, parse_cron
from .status import daemon_status, stop_daemon

__all__ = ["Daemon", "DaemonAlreadyRunning", "SleepAborted", "SleepJob", "SubprocessSleep", "abort_own",
           "daemon_info", "daemon_status", "inprocess_sleep", "journals", "load_target", "parse_cron", "recover",
           "request_result", "request_sleep", "stop_daemon", "submit_request", "wait_request", "worker_main"]
