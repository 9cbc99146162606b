"""How a run uses the CPU's cores (tuilm/train/workers.py): the plan, and the step's rows split over threads giving
exactly the step that runs the same micro-batches one after another."""

from __future__ import annotations

import threading

import pytest
import torch

from tests.helpers import tiny_config, tiny_trainer
from tuilm.device import pick_precision
from tuilm.errors import ConfigError
from tuilm.flops import model_flops_per_token
from tuilm.model import GPT
from tuilm.train import events as ev
from tuilm.train.evaluate import evaluate
from tuilm.train.workers import Workers, plan

CPU = torch.device("cpu")
FP32 = pick_precision(CPU, "fp32")


def planned(source, *overrides, device=CPU, world=1, compile_on=False, precision=FP32):
    config = tiny_config(source, *overrides)
    return plan(config, device, precision, world, compile_on, model_flops_per_token(GPT(config.model)))


def test_a_tiny_step_runs_on_one_thread_and_a_larger_one_on_torchs_threads(small_corpus, monkeypatch):
    monkeypatch.setattr("tuilm.train.workers.DEFAULT_THREADS", 2)
    small = planned(small_corpus, "batch_size=8", "seq_len=16", "d_model=32", "n_layers=2")
    assert (small.threads, small.workers) == (1, 1) and "one thread for a step of" in small.why
    large = planned(small_corpus, "batch_size=12", "seq_len=64", "d_model=128", "n_layers=4", "n_heads=4")
    assert (large.threads, large.workers, large.why) == (0, 1, "")  # torch's default threads, rows not split
    monkeypatch.setattr("tuilm.train.workers.DEFAULT_THREADS", 1)
    assert planned(small_corpus, "batch_size=8", "seq_len=16").why == ""  # one core: nothing to choose


@pytest.mark.parametrize(
    ("overrides", "kw"),
    [
        (["dropout=0.1"], {}),
        ([], {"world": 2}),
        ([], {"compile_on": True}),
        ([], {"precision": pick_precision(CPU, "fp16")}),
        (["micro_batch_size=4"], {}),
    ],
)
def test_rows_split_over_threads_are_refused_with_the_reason(small_corpus, monkeypatch, overrides, kw):
    monkeypatch.setattr("tuilm.train.workers.DEFAULT_THREADS", 2)
    assert planned(small_corpus, "batch_size=16", "seq_len=64", *overrides, **kw).workers == 1  # auto never splits
    with pytest.raises(ConfigError, match=r"train.parallel = batch .*; or use train.parallel = ops"):
        planned(small_corpus, "batch_size=16", "seq_len=64", "parallel=batch", *overrides, **kw)


def test_settings_the_user_gave_are_kept(small_corpus, monkeypatch):
    monkeypatch.setattr("tuilm.train.workers.DEFAULT_THREADS", 2)
    assert planned(small_corpus, "seq_len=64", "threads=2").threads == 2  # threads alone: torch's own, as asked
    assert planned(small_corpus, "seq_len=64", "parallel=ops").workers == 1
    assert planned(small_corpus, "parallel=batch", "threads=4").workers == 4  # even for a small step
    assert planned(small_corpus, "seq_len=64", device=torch.device("cuda")).workers == 1  # a GPU: CPU rules off


def _run(source, run_dir, *overrides):
    trainer, rec = tiny_trainer(source, run_dir, "max_steps=6", "health.interval=3", "sample_tokens=0", *overrides)
    threads = set()
    trainer.model.register_forward_pre_hook(lambda *_: threads.add(threading.current_thread().name))
    trainer.run()
    losses = [e.loss for e in rec.of(ev.Step)]
    return trainer, losses, threads


def test_rows_split_over_threads_train_exactly_as_the_same_micro_batches_in_turn(small_corpus, tmp_path):
    split, split_losses, split_threads = _run(small_corpus, tmp_path / "a", "parallel=batch", "threads=2")
    turn, turn_losses, turn_threads = _run(
        small_corpus, tmp_path / "b", "parallel=ops", "threads=1", "micro_batch_size=4"
    )
    assert split.cores.workers == 2 and split.batches.micro == 4 == turn.batches.micro
    assert {t for t in split_threads if t.startswith("tuilm-worker")} == {"tuilm-worker_0", "tuilm-worker_1"}
    assert not any(t.startswith("tuilm-worker") for t in turn_threads)
    assert len(split_losses) == 6 and split_losses == turn_losses  # bit for bit, not approximately
    for (name, a), b in zip(split.model.state_dict().items(), turn.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert split.workers is None  # the run's threads ended with it


def test_an_evaluation_on_worker_threads_gives_the_same_numbers(small_corpus, tmp_path):
    trainer, _ = tiny_trainer(small_corpus, tmp_path / "run", "max_steps=1", "seq_len=8")
    dataset = trainer.dataset
    workers = Workers(2)
    try:
        alone = evaluate(trainer.model, dataset, CPU)
        shared = evaluate(trainer.model, dataset, CPU, workers=workers)
    finally:
        workers.close()
    assert shared == alone and shared.tokens > 0
