"""Out of memory heals itself: the micro-batch is halved and the step redone, with the same gradient."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import tiny_trainer
from tuilm.run_setup import attach_files
from tuilm.train import events as ev

COMMON = ("max_steps=6", "batch_size=8", "eval_interval=3", "health.interval=1000", "sample_tokens=0")


def oom_above(trainer, rows: int) -> list[int]:
    """Make the trainer's forward pass raise torch.OutOfMemoryError on micro-batches of more than `rows` rows,
    as CUDA would; returns the micro-batch sizes it was called with."""
    forward, sizes = trainer.forward, []

    def limited(x, **kwargs):
        sizes.append(x.shape[0])
        if x.shape[0] > rows:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return forward(x, **kwargs)

    trainer.forward = limited
    return sizes


@pytest.mark.parametrize("log_interval", [1, 2])
def test_out_of_memory_halves_the_micro_batch_and_redoes_the_step(small_corpus, tmp_path, log_interval):
    reference, ref_rec = tiny_trainer(small_corpus, tmp_path / "ref", *COMMON, "micro_batch_size=2")
    reference.run()
    healed, rec = tiny_trainer(small_corpus, tmp_path / "healed", *COMMON, f"log_interval={log_interval}")
    metrics = attach_files(healed)
    sizes = oom_above(healed, 2)
    healed.run()
    metrics.close()
    assert healed.result.status == "completed"
    assert sizes[:4] == [8, 4, 2, 2]  # 8 fails, 4 fails, then 2 rows at a time from the first step on
    assert healed.batches.micro == 2
    for a, b in zip(reference.model.parameters(), healed.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    ref_steps = {s.step: s.loss for s in ref_rec.of(ev.Step)}
    for step in rec.of(ev.Step):
        if log_interval == 1:
            assert step.loss == pytest.approx(ref_steps[step.step], abs=1e-6)
    written = [json.loads(line) for line in (tmp_path / "healed" / "metrics.jsonl").read_text().splitlines()]
    notes = [e["message"] for e in written if e["event"] == "log" and "out of memory" in e["message"]]
    assert notes == [
        "out of memory at micro-batch 8 rows: now 4, step 1 redone",
        "out of memory at micro-batch 4 rows: now 2, step 1 redone",
    ]


def test_out_of_memory_at_one_row_fails_the_run(small_corpus, tmp_path):
    trainer, _ = tiny_trainer(small_corpus, tmp_path / "run", *COMMON)
    oom_above(trainer, 0)
    trainer.run()
    assert isinstance(trainer.error, torch.OutOfMemoryError)
