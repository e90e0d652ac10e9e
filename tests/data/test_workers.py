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
