"""The lean step loop (train.log_interval > 1): the same training, fewer events, nothing read back in between."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.helpers import tiny_trainer
from tuilm.run_setup import attach_files
from tuilm.train import events as ev

COMMON = ("max_steps=23", "eval_interval=10", "health.interval=1000", "sample_tokens=0", "checkpoint_interval=1000")


def test_lean_loop_trains_the_same_and_logs_each_interval(small_corpus, tmp_path):
    plain, rec = tiny_trainer(small_corpus, tmp_path / "plain", *COMMON)
    plain.run()
    lean, lean_rec = tiny_trainer(small_corpus, tmp_path / "lean", *COMMON, "log_interval=4")
    assert lean.lean
    metrics = attach_files(lean)
    lean.run()
    metrics.close()
    # The same weights at the end: the lean steps differ only in what they read back.
    for a, b in zip(plain.model.parameters(), lean.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    # Logged steps: every 4th, the steps evaluations follow (10, 20) and max_steps.
    logged = [s.step for s in lean_rec.of(ev.Step)]
    assert logged == [4, 8, 10, 12, 16, 20, 23]
    # A logged step's loss is the token-weighted mean of the steps since the previous logged one.
    per_step = {s.step: s for s in rec.of(ev.Step)}
    tokens_of = {s.step: s.tokens - (per_step[s.step - 1].tokens if s.step > 1 else 0) for s in per_step.values()}
    previous = 0
    for event in lean_rec.of(ev.Step):
        covered = range(previous + 1, event.step + 1)
        mean = sum(per_step[i].loss * tokens_of[i] for i in covered) / sum(tokens_of[i] for i in covered)
        assert event.loss == pytest.approx(mean, abs=1e-5)
        assert event.tokens == per_step[event.step].tokens
        assert event.grad_norm == pytest.approx(per_step[event.step].grad_norm, rel=1e-4)
        previous = event.step
    written = [json.loads(line) for line in (tmp_path / "lean" / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in written if e["event"] == "step"] == logged


def test_lean_step_skips_a_non_finite_update_on_the_device(small_corpus, tmp_path):
    trainer, rec = tiny_trainer(small_corpus, tmp_path / "nan", "max_steps=8", *COMMON[1:], "log_interval=4")
    forward = trainer.forward

    def poisoned(x, **kwargs):  # step 2 (a lean step) sees a NaN loss
        out = forward(x, **kwargs)
        return out * math.nan if trainer.step == 1 else out

    trainer.forward = poisoned
    trainer.run()
    assert trainer.result.status == "completed"
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    warnings = [e.message for e in rec.of(ev.Log) if "non-finite" in e.message]
    assert warnings == ["1 non-finite step(s) before step 4 skipped"]
    assert rec.of(ev.Step)[0].skipped
