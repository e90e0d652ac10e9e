"""Task functions for the worker-pool tests (importable by worker processes)."""

from __future__ import annotations

import os
import signal
import time


def task(task: dict, send) -> None:
    action = task["action"]
    send(("start", action))
    if action == "sleep":
        time.sleep(600)
    elif action == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "raise":
        raise ValueError("boom")
    send(("step", action, {"status": "done", "pid": os.getpid()}))
