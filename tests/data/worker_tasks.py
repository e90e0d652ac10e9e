"""Task functions for the worker-pool tests (importable by worker processes)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

# what a worker saw when it imported this module (the task's modules load after the thread limit)
IMPORT_THREADS = os.environ.get("OMP_NUM_THREADS")


def task(task: dict, send) -> None:
    action = task["action"]
    send(("start", action))
    if action == "sleep":
        time.sleep(600)
    elif action == "write_later":
        time.sleep(task["delay"])
        Path(task["path"]).write_text("written by a worker")
    elif action == "threads":
        import torch

        send(
            (
                "step",
                action,
                {"status": "done", "import_env": IMPORT_THREADS, "torch": torch.get_num_threads()},
            )
        )
        return
    elif action == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "raise":
        raise ValueError("boom")
    send(("step", action, {"status": "done", "pid": os.getpid()}))
