"""Run logging on rank 0: `metrics.jsonl`, TensorBoard events, a progress bar, and
loss-spike detection.

`metrics.jsonl` has one JSON object per line: periodic training records
(`{"step", "loss", "lr", "grad_norm", "steps_per_s", "samples_per_s", ...}`) and events
(`{"event": "nonfinite" | "loss_spike" | "resume" | "checkpoint" | "preempted" | ...}`).
It is appended to across resumes, so a run's whole history stays in one file.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any


class MetricsLogger:
    def __init__(self, run_dir: Path, *, tensorboard: bool = True, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._file = open(self.path, "a", buffering=1) if enabled else None  # noqa: SIM115
        self._tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(run_dir) / "tb"))
            except ImportError:  # an extra: metrics.jsonl holds the same numbers
                print(
                    "voxforge: TensorBoard events need the optional package 'tensorboard' "
                    "(pip install 'voxforge[tensorboard]'); writing metrics.jsonl only. "
                    "Set train.tensorboard=false to silence this.",
                    file=sys.stderr,
                )

    def log(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.time(), 3), **values}
        self._file.write(json.dumps(record, default=float) + "\n")
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)

    def event(self, step: int, event: str, **values: Any) -> None:
        self.log(step, {"event": event, **values})

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class Progress:
    """The training progress bar: stage, step/max, steps/s and ETA (tqdm's own), loss, samples/s.

    tqdm turns itself off where stderr is not a terminal (a batch job's log file); there one
    plain line with the same numbers is written every `line_every` seconds instead, so a log
    still shows how far the run is and when it will end.
    """

    def __init__(
        self, total: int, initial: int, enabled: bool, *, desc: str | None = None, line_every: float = 30.0
    ):
        self.bar = None
        self.total, self.step, self.desc, self.line_every = total, initial, desc, line_every
        self._lines = False
        self._postfix: dict[str, Any] = {}
        self._start_step, self._start = initial, time.monotonic()
        self._last_line = self._start
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                initial=initial,
                desc=desc,
                unit="step",
                dynamic_ncols=True,
                file=sys.stderr,
                disable=None,
            )
            self._lines = self.bar.disable  # disable=None: off without a terminal

    def update(self, n: int, **postfix: Any) -> None:
        self.step += n
        if postfix:
            self._postfix = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()}
        if self.bar is not None and not self.bar.disable:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(self._postfix, refresh=False)
        elif self._lines and time.monotonic() - self._last_line >= self.line_every:
            self._last_line = time.monotonic()
            print(self.line(), file=sys.stderr, flush=True)

    def line(self) -> str:
        """`stage: step 120/1000 (12%), 3.2 step/s, ETA 0:04:35, loss=0.1234 samples_s=102.7`"""
        elapsed = max(time.monotonic() - self._start, 1e-9)
        rate = (self.step - self._start_step) / elapsed
        parts = [f"step {self.step}/{self.total} ({100.0 * self.step / max(self.total, 1):.0f}%)"]
        if rate > 0:
            eta = int(max(self.total - self.step, 0) / rate)
            parts += [f"{rate:.3g} step/s", f"ETA {eta // 3600}:{eta // 60 % 60:02d}:{eta % 60:02d}"]
        text = ", ".join(parts)
        if self._postfix:
            text += ", " + " ".join(f"{k}={v}" for k, v in self._postfix.items())
        return f"{self.desc}: {text}" if self.desc else text

    def write(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class SpikeDetector:
    """A loss above `factor` x the median of the last `window` losses is a spike."""

    def __init__(self, factor: float, window: int):
        self.factor = factor
        self.recent: deque[float] = deque(maxlen=window)

    def check(self, loss: float) -> float | None:
        """Returns the median it was compared with when `loss` is a spike, else None."""
        spike = None
        if len(self.recent) >= max(5, self.recent.maxlen // 2):
            ordered = sorted(self.recent)
            median = ordered[len(ordered) // 2]
            if median > 0 and loss > self.factor * median:
                spike = median
        self.recent.append(loss)
        return spike

    def state_dict(self) -> dict:
        return {"recent": list(self.recent)}

    def load_state_dict(self, state: dict) -> None:
        self.recent.clear()
        self.recent.extend(state.get("recent", []))
