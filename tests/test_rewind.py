"""Health that acts (issue 16 section 3): health.on_spike (skip, stop, rewind past a planted bad batch) and
step-numbered checkpoints (train.keep_checkpoints, --model-path RUN@STEP)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

import tuilm.train.trainer as trainer_module
from tests.helpers import run_tuilm, tiny_trainer
from tuilm.checkpoint import read_metadata
from tuilm.checkpoint.paths import resolve_model_path
from tuilm.errors import CheckpointError, ConfigError
from tuilm.train import events as ev
from tuilm.train.metrics_file import MetricsFile, read_events
from tuilm.train.rewind import MAX_REWINDS
from tuilm.tui.store import RunStore

BAD = 15  # the planted batch: the 15th the trainer draws
COMMON = ("max_steps=30", "sample_tokens=0", "eval_interval=1000")
REWIND = ("health.on_spike=rewind", "health.rewind_interval=5", "health.spike_factor=1.2")


def plant_bad_batch(trainer, monkeypatch, at: int = BAD, lr_factor: float = 1e5) -> list[int]:
    """The `at`-th batch drawn gets random targets, and its step a learning rate `lr_factor` times the schedule's:
    its update wrecks the weights, as a poisoned batch at a high learning rate does, and the loss spikes (at once or
    one step later). Returns the count of batches drawn so far (a one-item list)."""
    draw, calls = trainer.batches.next_step, [0]

    def next_step(s):
        calls[0] += 1
        micro = draw(s)
        if calls[0] == at:
            rng = np.random.default_rng(0)
            vocab = trainer.config.model.vocab_size
            micro = [
                dataclasses.replace(b, targets=rng.integers(0, vocab, b.targets.shape).astype(b.targets.dtype))
                for b in micro
            ]
        return micro

    real_lr = trainer_module.lr_at
    monkeypatch.setattr(trainer.batches, "next_step", next_step)
    monkeypatch.setattr(
        trainer_module,
        "lr_at",
        lambda step, progress, cfg, *more: real_lr(step, progress, cfg, *more) * (lr_factor if calls[0] == at else 1),
    )
    return calls


@pytest.fixture(scope="module")
def clean_loss(tmp_path_factory):
    from tests.conftest import write_corpus

    folder = tmp_path_factory.mktemp("clean")
    corpus = write_corpus(folder)
    trainer, _ = tiny_trainer(corpus, folder / "run", *COMMON)
    trainer.run()
    return trainer.result.last_val_loss


def test_a_bad_batch_is_rewound_past_and_the_run_ends_near_a_clean_one(small_corpus, tmp_path, monkeypatch, clean_loss):
    poisoned, _ = tiny_trainer(small_corpus, tmp_path / "none", *COMMON)
    plant_bad_batch(poisoned, monkeypatch)
    poisoned.run()
    monkeypatch.undo()

    trainer, rec = tiny_trainer(small_corpus, tmp_path / "rewind", *COMMON, *REWIND)
    metrics = MetricsFile(tmp_path / "rewind" / "metrics.jsonl")  # what `tuilm train` subscribes (run_setup.py)
    trainer.bus.subscribe(metrics)
    plant_bad_batch(trainer, monkeypatch)
    trainer.run()
    metrics.close()
    rewinds = rec.of(ev.Rewind)
    # The random targets spike the loss at once, or the wrecked weights do one step later.
    assert len(rewinds) == 1 and rewinds[0].step in (BAD, BAD + 1), rewinds
    bad = rewinds[0].step
    assert (rewinds[0].to_step, rewinds[0].skipped_batches) == (10, bad - 10)
    assert rewinds[0].cause in ("loss_spike", "nonfinite")  # wrecked weights may overflow the loss too
    assert trainer.result.reason == "max_steps" and trainer.result.step == 30
    # Steps 11..bad ran twice: on the batches up to the bad one, then on the next ones.
    assert [s.step for s in rec.of(ev.Step)] == [*range(1, bad + 1), *range(11, 31)]
    # The poison hurts (the run without rewind ends far worse), and the rewound run ends within noise of a clean one.
    assert not poisoned.result.last_val_loss <= clean_loss + 0.5  # far worse, or not even finite
    assert abs(trainer.result.last_val_loss - clean_loss) < 0.15
    written = [e for e in read_events(tmp_path / "rewind" / "metrics.jsonl") if isinstance(e, ev.Rewind)]
    assert written == rewinds
    store = RunStore()  # the dashboard (and tuilm watch): the rewound steps are drawn once, the newest
    for event in rec.events:
        store(event)
    assert store.step_series("loss")[0].tolist() == list(range(1, 31))
    alerts = [a for a in rec.of(ev.Alert) if a.code == "rewind"]
    assert len(alerts) == 1 and alerts[0].remedy and f"skipping the batches of steps 11..{bad}" in alerts[0].message


def test_a_resume_after_a_rewind_is_exact(small_corpus, tmp_path, monkeypatch):
    common = (*COMMON, *REWIND, "max_steps=24", "dropout=0.1")
    straight, rec = tiny_trainer(small_corpus, tmp_path / "straight", *common)
    plant_bad_batch(straight, monkeypatch)
    straight.run()
    monkeypatch.undo()
    assert len(rec.of(ev.Rewind)) == 1
    reference = [s.loss for s in rec.of(ev.Step) if s.step > 20]

    first, _ = tiny_trainer(small_corpus, tmp_path / "split", *common)
    plant_bad_batch(first, monkeypatch)
    first.bus.subscribe(lambda e: first.stop() if isinstance(e, ev.Step) and e.step == 20 else None)
    first.run()
    monkeypatch.undo()
    assert first.result.step == 20
    second, rec2 = tiny_trainer(small_corpus, tmp_path / "split", *common, resume=True)
    second.run()
    assert [s.step for s in rec2.of(ev.Step)] == list(range(21, 25))
    assert [s.loss for s in rec2.of(ev.Step)] == pytest.approx(reference, abs=1e-6, rel=0)


def test_rewinds_in_a_row_give_up_at_the_good_state(small_corpus, tmp_path, monkeypatch):
    trainer, rec = tiny_trainer(small_corpus, tmp_path / "r", *COMMON, *REWIND)
    # Every loss from step 13 on is a "spike" (the threshold follows a running average that a rewind restores).
    real = trainer.health.is_spike
    monkeypatch.setattr(trainer.health, "is_spike", lambda loss: real(loss) or trainer.step > 12)
    trainer.run()
    rewinds = rec.of(ev.Rewind)
    assert [r.in_a_row for r in rewinds] == list(range(1, MAX_REWINDS + 1))
    assert {r.to_step for r in rewinds} == {10}
    assert trainer.result.reason == "rewinds" and trainer.result.status == "diverged"
    assert trainer.result.step == 10
    assert read_metadata(tmp_path / "r" / "last.safetensors")["step"] == "10"


def test_a_nonfinite_step_rewinds_too(small_corpus, tmp_path):
    trainer, rec = tiny_trainer(small_corpus, tmp_path / "r", *COMMON, *REWIND, "max_steps=20")
    fired = []  # once: the step after the rewind is step 15 again, on the next batch

    def poison(grad):
        if trainer.step == 14 and not fired:
            fired.append(True)
            return grad * math.nan
        return grad

    trainer.model.blocks[0].mlp.fc.weight.register_hook(poison)
    trainer.run()
    assert [(r.step, r.to_step, r.cause) for r in rec.of(ev.Rewind)] == [(15, 10, "nonfinite")]
    assert trainer.result.reason == "max_steps"
    assert all(math.isfinite(float(p.sum())) for p in trainer.model.parameters())


def test_skip_drops_the_spiking_update_and_stop_ends_the_run(small_corpus, tmp_path, monkeypatch, clean_loss):
    trainer, rec = tiny_trainer(small_corpus, tmp_path / "skip", *COMMON, "health.on_spike=skip")
    calls = plant_bad_batch(trainer, monkeypatch)
    # The loss spike is injected at the poisoned step itself: skip judges a step's loss before its update.
    monkeypatch.setattr(trainer.health, "is_spike", lambda loss: calls[0] == BAD)
    trainer.run()
    monkeypatch.undo()
    assert [s.step for s in rec.of(ev.Step) if s.skipped] == [BAD] and trainer.result.reason == "max_steps"
    assert abs(trainer.result.last_val_loss - clean_loss) < 0.15  # the poisoned update was not applied

    trainer, rec = tiny_trainer(small_corpus, tmp_path / "stop", *COMMON, "health.on_spike=stop")
    calls = plant_bad_batch(trainer, monkeypatch)
    monkeypatch.setattr(trainer.health, "is_spike", lambda loss: calls[0] == BAD)
    trainer.run()
    assert trainer.result.reason == "loss_spike" and trainer.result.status == "diverged"
    assert trainer.result.step == BAD and not rec.of(ev.Rewind)


def test_on_spike_is_validated():
    from tuilm.config import RunConfig, apply_overrides

    with pytest.raises(ConfigError, match=r"health\.on_spike 'sometimes' is not one of: none, skip, stop, rewind"):
        apply_overrides(RunConfig(), ["health.on_spike=sometimes"])
    with pytest.raises(ConfigError, match=r"health\.rewind_interval must be an integer in \[1, "):
        apply_overrides(RunConfig(), ["health.rewind_interval=0"])


# -- step-numbered checkpoints -------------------------------------------------------------------------------


def test_keep_checkpoints_keeps_the_newest_and_model_path_at_step_finds_them(small_corpus, tmp_path):
    run = tmp_path / "run"
    trainer, _ = tiny_trainer(small_corpus, run, "max_steps=12", "checkpoint_interval=3", "keep_checkpoints=2")
    trainer.run()
    assert sorted(p.name for p in run.glob("step-*")) == ["step-12.safetensors", "step-9.safetensors"]
    assert not list(run.glob("*.tmp*"))
    assert resolve_model_path(f"{run}@9") == run / "step-9.safetensors"
    assert json.loads(read_metadata(f"{run}@9")["step"]) == 9
    with pytest.raises(CheckpointError) as info:
        resolve_model_path(f"{run}@6")
    assert "no checkpoint of step 6; steps it has: 9, " in str(info.value)  # then last's (and best's) step


def test_without_keep_checkpoints_none_are_written_and_last_counts_for_its_step(trained_run):
    assert not list(trained_run.glob("step-*"))
    assert resolve_model_path(f"{trained_run}@10") == trained_run / "last.safetensors"


def test_model_path_at_step_through_the_cli(small_corpus, tmp_path):
    run = tmp_path / "run"
    trainer, _ = tiny_trainer(small_corpus, run, "max_steps=6", "checkpoint_interval=3", "keep_checkpoints=5")
    trainer.run()
    result = run_tuilm("eval", "--model-path", f"{run}@3", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["model"] == "run/step-3.safetensors"
    result = run_tuilm("sample", "--model-path", f"{run}@4", "--prompt", "a")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "no checkpoint of step 4; steps it has: 3, " in result.stderr
