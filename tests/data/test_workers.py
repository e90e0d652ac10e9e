"""The time-limited worker pool: hangs are killed, crashes reported, the run goes on."""

from __future__ import annotations

from tests.data import worker_tasks
from voxforge.data.workers import run_tasks


def run(actions, workers=2, time_limit=None):
    messages, failures, finished = {}, {}, []
    run_tasks(
        [{"key": i, "action": a} for i, a in enumerate(actions)],
        worker_tasks.task,
        workers=workers,
        time_limit=time_limit,
        on_message=lambda key, m: messages.setdefault(key, []).append(m),
        on_failure=lambda key, reason, detail: failures.__setitem__(key, (reason, detail)),
        on_finished=finished.append,
    )
    return messages, failures, finished


def test_hang_is_killed_crash_reported_and_others_finish():
    actions = ["ok", "sleep", "crash", "raise", "ok", "ok"]
    messages, failures, finished = run(actions, workers=2, time_limit=3.0)
    assert sorted(finished) == list(range(len(actions)))
    assert failures[1][0] == "timeout"
    assert failures[2][0] == "worker_crashed" and "signal 9" in failures[2][1]
    assert failures[3][0] == "worker_error" and "boom" in failures[3][1]
    for key in (0, 4, 5):
        assert key not in failures
        assert messages[key][-1][2]["status"] == "done"
    # the start message of the hanging task arrived before it was killed
    assert messages[1] == [("start", "sleep")]


def test_in_process_mode_runs_in_order():
    messages, failures, finished = run(["ok", "raise", "ok"], workers=0)
    assert finished == [0, 1, 2]
    assert failures[1][0] == "worker_error"
    assert messages[0][-1][2]["status"] == "done"


def test_threads_per_process(monkeypatch):
    from voxforge.data import workers

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(workers, "usable_cores", lambda: 16)
    assert [workers.threads_per_process(n) for n in (1, 2, 3, 16, 40)] == [16, 8, 5, 1, 1]
    assert workers.threads_per_process(2, requested=6) == 6  # a user option wins
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert workers.threads_per_process(2) == 3  # then an explicit OMP_NUM_THREADS
    assert workers.threads_per_process(2, requested=5) == 5


def test_workers_get_their_threads_before_importing_the_task():
    """The limit is in the environment before numpy/torch load (OpenBLAS reads it only then)."""
    messages, failures, _ = run_tasks_with(["threads", "threads"], threads=3)
    assert not failures
    assert [messages[key][-1][2]["import_env"] for key in (0, 1)] == ["3", "3"]
    messages, failures, _ = run_tasks_with(["threads", "threads"], threads=1)
    assert [messages[key][-1][2]["torch"] for key in (0, 1)] == [1, 1]  # torch caps its own at the cores


def run_tasks_with(actions, **kwargs):
    messages, failures, finished = {}, {}, []
    run_tasks(
        [{"key": i, "action": a} for i, a in enumerate(actions)],
        worker_tasks.task,
        workers=2,
        time_limit=60,
        on_message=lambda key, m: messages.setdefault(key, []).append(m),
        on_failure=lambda key, reason, detail: failures.__setitem__(key, (reason, detail)),
        on_finished=finished.append,
        **kwargs,
    )
    return messages, failures, finished


PARENT = """
import sys
from tests.data import worker_tasks
from voxforge.data.workers import run_tasks

def on_message(key, message):
    print(message[0], flush=True)

if __name__ == "__main__":
    task = {"key": 0, "action": "write_later", "delay": 2.0, "path": sys.argv[1]}
    run_tasks([task], worker_tasks.task, workers=1, time_limit=None, on_message=on_message, on_failure=print)
"""


def test_workers_die_with_their_parent(tmp_path, repo_root):
    """A SIGKILLed prepare must not leave workers that go on writing into OUT."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script, marker = tmp_path / "parent.py", tmp_path / "marker.txt"
    script.write_text(PARENT)
    env = {**os.environ, "PYTHONPATH": str(repo_root)}
    process = subprocess.Popen(
        [sys.executable, str(script), str(marker)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert process.stdout.readline().strip() == "start"  # the worker is inside its task
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    time.sleep(4.0)  # twice the task's delay
    assert not marker.exists()
