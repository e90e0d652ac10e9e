"""A process pool with a time limit per task, for work on untrusted files.

`concurrent.futures` cannot stop one running task, and a hostile file can make a parser loop
or allocate until the kernel kills the process. Here each worker is a separate process that
receives one task at a time over a pipe and streams messages back; the parent waits on the
pipes and the process sentinels together, and
- kills a worker whose task has run past `time_limit` (reported as `timeout`),
- notices a worker that died (segfault, out-of-memory kill; reported as `worker_crashed` with
  the exit code), and
- starts a replacement in both cases, so one bad asset never stops the run.

Workers are started with `forkserver` where available (cheap forks from a clean server
process that never ran user code) and `spawn` elsewhere. `workers=0` runs tasks in the calling
process (no isolation, no time limit) for debugging.

Protocol: the task function is called as `fn(task, send)` and reports progress with
`send(message)`; the pool passes each message to `on_message(task_key, message)`, and calls
`on_failure(task_key, reason, detail)` when a worker is killed or dies. `task_key` is
`task["key"]`.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection, wait
from typing import Any

TaskFn = Callable[[dict[str, Any], Callable[[Any], None]], None]


def _worker_main(conn: Connection, fn: TaskFn, initializer: Callable[[], None] | None) -> None:
    if initializer is not None:
        initializer()
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        try:
            fn(task, conn.send)
            conn.send(("__done__", None))
        except BaseException as err:  # noqa: BLE001 - report anything, keep serving
            conn.send(("__error__", f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=6)}"))


def _context() -> multiprocessing.context.BaseContext:
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


class _Worker:
    def __init__(self, ctx: Any, fn: TaskFn, initializer: Callable[[], None] | None):
        parent, child = ctx.Pipe(duplex=True)
        self.conn = parent
        self.process = ctx.Process(target=_worker_main, args=(child, fn, initializer), daemon=True)
        self.process.start()
        child.close()
        self.task: dict[str, Any] | None = None
        self.started = 0.0

    def stop(self, kill: bool = False) -> None:
        if kill and self.process.is_alive():
            self.process.kill()
        else:
            try:
                self.conn.send(None)
            except (OSError, BrokenPipeError):
                pass
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


def run_tasks(
    tasks: Iterable[dict[str, Any]],
    fn: TaskFn,
    *,
    workers: int,
    time_limit: float | None,
    on_message: Callable[[Any, Any], None],
    on_failure: Callable[[Any, str, str], None],
    on_finished: Callable[[Any], None] | None = None,
    initializer: Callable[[], None] | None = None,
) -> None:
    """Run every task; see the module docstring for the protocol."""
    queue = deque(tasks)
    on_finished = on_finished or (lambda key: None)
    if workers <= 0:
        for task in queue:
            if initializer is not None:
                initializer()
                initializer = None
            try:
                fn(task, lambda message, key=task["key"]: on_message(key, message))
            except Exception as err:  # noqa: BLE001 - same contract as a worker process
                on_failure(task["key"], "worker_error", f"{type(err).__name__}: {err}")
            on_finished(task["key"])
        return
    ctx = _context()
    pool: list[_Worker] = []
    try:
        while queue or any(w.task is not None for w in pool):
            # hand out work, starting workers lazily up to the limit
            for worker in pool:
                if worker.task is None and queue:
                    _assign(worker, queue.popleft())
            while queue and len(pool) < workers:
                worker = _Worker(ctx, fn, initializer)
                pool.append(worker)
                _assign(worker, queue.popleft())
            busy = [w for w in pool if w.task is not None]
            if not busy:
                continue
            now = time.monotonic()
            timeout = 1.0
            if time_limit is not None:
                timeout = max(0.0, min(timeout, min(w.started + time_limit - now for w in busy)))
            ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout=timeout)
            for worker in busy:
                key = worker.task["key"]
                finished, dead = False, False
                if worker.conn in ready:
                    try:
                        while worker.conn.poll():
                            message = worker.conn.recv()
                            if isinstance(message, tuple) and message and message[0] == "__done__":
                                finished = True
                                break
                            if isinstance(message, tuple) and message and message[0] == "__error__":
                                on_failure(key, "worker_error", message[1])
                                finished = True
                                break
                            on_message(key, message)
                    except (EOFError, OSError):
                        dead = True
                if (
                    not finished
                    and (dead or worker.process.sentinel in ready)
                    and not worker.process.is_alive()
                ):
                    code = worker.process.exitcode
                    detail = f"worker process exited with code {code}"
                    if code is not None and code < 0:
                        detail += f" (signal {-code}{', likely out of memory' if -code == 9 else ''})"
                    on_failure(key, "worker_crashed", detail)
                    _retire(pool, worker)
                    on_finished(key)
                    continue
                if finished:
                    worker.task = None
                    on_finished(key)
                elif time_limit is not None and time.monotonic() - worker.started > time_limit:
                    on_failure(key, "timeout", f"asset took longer than the time limit of {time_limit:g} s")
                    _retire(pool, worker)
                    on_finished(key)
    finally:
        for worker in pool:
            worker.stop(kill=worker.task is not None)


def _assign(worker: _Worker, task: dict[str, Any]) -> None:
    worker.task = task
    worker.started = time.monotonic()
    worker.conn.send(task)


def _retire(pool: list[_Worker], worker: _Worker) -> None:
    """Kill (if still running) and drop a worker; the main loop starts a fresh one when needed."""
    worker.task = None
    worker.stop(kill=True)
    pool.remove(worker)


def default_workers() -> int:
    """Half the CPU cores (renderers and extractors use several threads each), at least 1."""
    return max(1, (os.cpu_count() or 2) // 2)
