"""A process pool with a time limit per task, for work on untrusted files.

`concurrent.futures` cannot stop one running task, and a hostile file can make a parser loop
or allocate until the kernel kills the process. Here each worker is a separate process that
receives one task at a time over a pipe and streams messages back; the parent waits on the
pipes and the process sentinels together, and
- kills a worker whose task has run past `time_limit` (reported as `timeout`),
- notices a worker that died (segfault, out-of-memory kill; reported as `worker_crashed` with
  the exit code), and
- starts a replacement in both cases, so one bad asset never stops the run.

Threads: OpenMP and OpenBLAS threads spin-wait for work, so processes that together run more
threads than there are cores slow each other down badly (two torch processes on 2 cores: up to
17x). Each worker therefore gets `threads` CPU threads (`threads_per_process`: the cores this
process may use divided by the number of workers, unless OMP_NUM_THREADS is set), applied
through the environment *before* the task function is imported (workers receive it by name,
`module:qualname`), i.e. before the worker imports numpy or torch, whose thread pools read those variables when they load.

A worker also ends the moment its parent does (killed with SIGKILL, out of memory): each one
holds the read end of a "lifeline" pipe whose write end only the parent has, and a thread
exits the worker when that pipe closes. Otherwise an orphan would finish its current asset
while the re-run of the same command works on that asset too, two processes writing the same
files.

Workers are started with `forkserver` where available (cheap forks from a clean server
process that never ran user code) and `spawn` elsewhere. `workers=0` runs tasks in the calling
process (no isolation, no time limit) for debugging.

Protocol: the task function is called as `fn(task, send)` and reports progress with
`send(message)`; the pool passes each message to `on_message(task_key, message)`, and calls
`on_failure(task_key, reason, detail)` when a worker is killed or dies. `task_key` is
`task["key"]`.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection, wait
from typing import Any

TaskFn = Callable[[dict[str, Any], Callable[[Any], None]], None]
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. under taskset or a container)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def threads_per_process(processes: int, requested: int | None = None) -> int:
    """CPU threads for each of `processes` processes sharing this machine.

    `requested` (a user option) wins, then an explicit OMP_NUM_THREADS, then a fair share:
    processes x threads <= cores.
    """
    if requested is not None and requested > 0:
        return int(requested)
    explicit = os.environ.get("OMP_NUM_THREADS", "").strip()
    if explicit.isdigit() and int(explicit) > 0:
        return int(explicit)
    return max(1, usable_cores() // max(1, processes))


def limit_threads(threads: int) -> None:
    """Use `threads` CPU threads in this process: torch now, numpy/BLAS/OpenMP when they load."""
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


def _exit_with_parent(lifeline: Connection) -> None:
    """Block until the parent's end of the lifeline closes (it never sends), then exit."""
    try:
        lifeline.recv()
    except (EOFError, OSError):
        pass
    os._exit(1)  # no cleanup: the task's partial files are temporary names a re-run replaces


def _reference(fn: Callable[..., Any] | None) -> str | None:
    """`module:qualname` of a module-level function (what a worker imports it by)."""
    if fn is None:
        return None
    name = f"{fn.__module__}:{fn.__qualname__}"
    if "<" in fn.__qualname__ or _resolve(name) is not fn:
        raise ValueError(f"worker tasks must be module-level functions, got {fn!r}")
    return name


def _resolve(name: str | None) -> Any:
    if name is None:
        return None
    module, _, qualname = name.partition(":")
    target: Any = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


def _worker_main(
    conn: Connection, threads: int | None, refs: tuple[str, str | None], lifeline: Connection
) -> None:
    threading.Thread(target=_exit_with_parent, args=(lifeline,), daemon=True).start()
    if threads is not None:
        limit_threads(threads)
    fn, initializer = (_resolve(ref) for ref in refs)  # imports the task's modules (numpy, torch) only now
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
    def __init__(self, ctx: Any, threads: int | None, refs: tuple[str, str | None]):
        parent, child = ctx.Pipe(duplex=True)
        lifeline, self.lifeline = ctx.Pipe(duplex=False)  # (read end: worker, write end: here)
        self.conn = parent
        self.process = ctx.Process(target=_worker_main, args=(child, threads, refs, lifeline), daemon=True)
        self.process.start()
        child.close()
        lifeline.close()
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
        self.lifeline.close()


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
    threads: int | None = None,
) -> None:
    """Run every task; see the module docstring for the protocol.

    `threads`: CPU threads per worker process (None: `threads_per_process(workers)`); with
    `workers=0` the calling process is left as it is unless `threads` is given.
    """
    queue = deque(tasks)
    on_finished = on_finished or (lambda key: None)
    if workers <= 0:
        if threads is not None:
            limit_threads(threads)
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
    threads = threads_per_process(workers, threads)
    refs = (_reference(fn), _reference(initializer))
    pool: list[_Worker] = []
    try:
        while queue or any(w.task is not None for w in pool):
            # hand out work, starting workers lazily up to the limit
            for worker in pool:
                if worker.task is None and queue:
                    _assign(worker, queue.popleft())
            while queue and len(pool) < workers:
                worker = _Worker(ctx, threads, refs)
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
    """Half the usable CPU cores (renderers and extractors use several threads each), at least 1."""
    return max(1, usable_cores() // 2)
