"""MetricsLogger: metrics.jsonl always, TensorBoard events only with the `tensorboard` extra."""

from __future__ import annotations

import json
import sys

import pytest

from voxforge.train.logging import MetricsLogger


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
