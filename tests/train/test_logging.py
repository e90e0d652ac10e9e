"""MetricsLogger: metrics.jsonl always, TensorBoard events only with the `tensorboard` extra."""

from __future__ import annotations

import io
import json
import sys

import pytest

from voxforge.train.logging import MetricsLogger, Progress


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_events_when_installed(tmp_path):
    pytest.importorskip("tensorboard")
    logger = MetricsLogger(tmp_path, tensorboard=True)
    logger.log(1, {"loss": 0.5, "note": "text is skipped by TensorBoard"})
    logger.close()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert _records(tmp_path)[0]["loss"] == 0.5


def test_without_tensorboard_metrics_jsonl_still_written(tmp_path, monkeypatch, capsys):
    # None in sys.modules makes the import raise ImportError, as when the extra is missing
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    logger = MetricsLogger(tmp_path, tensorboard=True)
    logger.log(3, {"loss": 0.25})
    logger.event(3, "checkpoint")
    logger.close()
    message = capsys.readouterr().err
    assert "pip install 'voxforge[tensorboard]'" in message and "train.tensorboard=false" in message
    assert not (tmp_path / "tb").exists()
    assert [r["step"] for r in _records(tmp_path)] == [3, 3]


def test_tensorboard_off_says_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    MetricsLogger(tmp_path, tensorboard=False).close()
    assert capsys.readouterr().err == ""


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_shows_stage_steps_rate_eta_and_loss(monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    progress = Progress(10, 0, enabled=True, desc="toy_flow")
    progress.update(5, loss=0.123456, samples_s=640.0)
    progress.bar.refresh()
    progress.close()
    text = terminal.getvalue()
    assert "toy_flow" in text and "5/10" in text and "step/s" in text and "loss=0.1235" in text
    assert "<" in text  # tqdm's elapsed<remaining


def test_progress_without_a_terminal_writes_plain_lines(capsys):
    progress = Progress(100, 20, enabled=True, desc="ss_vae", line_every=0.0)
    progress.update(10, loss=0.5)
    progress.close()
    line = capsys.readouterr().err.strip()
    assert (
        line.startswith("ss_vae: step 30/100 (30%), ")
        and "step/s, ETA " in line
        and line.endswith("loss=0.5")
    )
    quiet = Progress(100, 0, enabled=True, desc="ss_vae")  # default: one line every 30 s
    quiet.update(1, loss=0.5)
    assert capsys.readouterr().err == ""
