"""The trainer: exact loss weighting, resume equality, stopping, controls, events and checkpoints."""

import json
import math
import threading

import pytest
import torch
from safetensors import safe_open

from tests.helpers import plant_failure, tiny_trainer
from tuilm.atomic import FILE_MODE
from tuilm.train import events as ev
from tuilm.train.metrics_file import MetricsFile, read_events


def one_step_weights(small_corpus, run_dir, *overrides):
    trainer, _ = tiny_trainer(
        small_corpus,
        run_dir,
        "optimizer=sgd",
        "momentum=0",
        "weight_decay=0",
        "grad_clip=0",
        "warmup_steps=0",
        "schedule=constant",
        "lr=1.0",
        "max_steps=1",
        "sample_tokens=0",
        "health.interval=0",
        *overrides,
    )
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.run()
    after = trainer.model.state_dict()
    # With plain SGD at lr 1, the weight change is exactly the gradient.
    return {k: before[k] - after[k] for k in before}, trainer


@pytest.mark.parametrize("policy", ["pad", "bucket", "pack"])
def test_accumulation_equals_one_big_batch(small_corpus, tmp_path, policy):
    big, t1 = one_step_weights(small_corpus, tmp_path / "a", f"policy={policy}")
    acc, t2 = one_step_weights(small_corpus, tmp_path / "b", f"policy={policy}", "micro_batch_size=3")
    assert t1.state.tokens == t2.state.tokens > 0
    for name in big:
        assert torch.allclose(big[name], acc[name], atol=1e-6, rtol=0), name


def test_loss_is_the_mean_over_real_target_tokens(small_corpus, tmp_path):
    trainer, rec = tiny_trainer(small_corpus, tmp_path / "r", "policy=pad", "max_steps=1", "micro_batch_size=3")
    # Recompute the first step's loss by hand from the same rows and the initial weights.
    from tuilm.data.pipeline import epoch_batches

    rows = trainer.dataset.train_rows
    index = epoch_batches(rows, 8, trainer.tcfg.seed, 0)[0]
    batch = trainer.batches.collate(index)
    with torch.no_grad():
        logits = trainer.model(torch.from_numpy(batch.inputs))
        expected = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), torch.from_numpy(batch.targets).flatten(), ignore_index=-100
        )
    trainer.run()
    step = rec.of(ev.Step)[0]
    assert step.loss == pytest.approx(float(expected), abs=1e-5)
    assert step.tokens == batch.n_targets


def test_stop_and_resume_reproduces_the_uninterrupted_run(small_corpus, tmp_path):
    common = ("max_steps=12", "dropout=0.1", "eval_interval=4", "checkpoint_interval=5")
    straight, rec = tiny_trainer(small_corpus, tmp_path / "straight", *common)
    straight.run()
    reference = [s.loss for s in rec.of(ev.Step)]
    assert len(reference) == 12

    first, rec1 = tiny_trainer(small_corpus, tmp_path / "split", *common)
    first.bus.subscribe(lambda e: first.stop() if isinstance(e, ev.Step) and e.step == 7 else None)
    first.run()
    assert first.result.reason == "stopped" and first.result.step == 7
    second, rec2 = tiny_trainer(small_corpus, tmp_path / "split", *common, resume=True)
    second.run()
    resumed = [s.loss for s in rec1.of(ev.Step)] + [s.loss for s in rec2.of(ev.Step)]
    assert [s.step for s in rec2.of(ev.Step)] == list(range(8, 13))
    assert resumed == pytest.approx(reference, abs=1e-6, rel=0)
    assert rec2.of(ev.RunStarted)[0].resumed_step == 7


def test_stopping_criteria(small_corpus, tmp_path):
    trainer, _ = tiny_trainer(small_corpus, tmp_path / "tokens", "max_tokens=300")
    trainer.run()
    assert trainer.result.reason == "max_tokens" and trainer.state.tokens >= 300
    trainer, _ = tiny_trainer(small_corpus, tmp_path / "epochs", "epochs=2")
    trainer.run()
    assert trainer.result.reason == "epochs" and trainer.step == 2 * trainer.steps_per_epoch
    trainer, _ = tiny_trainer(small_corpus, tmp_path / "time", "time=1s", "eval_interval=100000")
    trainer.run()
    assert trainer.result.reason == "time" and trainer.state.elapsed >= 1.0


def test_early_stopping_on_patience(small_corpus, tmp_path):
    # A learning rate below float32 resolution leaves the weights as they are: the first evaluation stays the
    # best, and two more without improvement end the run.
    trainer, rec = tiny_trainer(
        small_corpus, tmp_path / "r", "lr=1e-12", "min_lr=0", "warmup_steps=0", "eval_interval=1", "patience=2"
    )
    trainer.run()
    assert trainer.result.reason == "early_stop"
    assert [e.is_best for e in rec.of(ev.Eval)] == [True, False, False]


def test_events_checkpoints_and_metrics_file(small_corpus, tmp_path):
    run = tmp_path / "run"
    trainer, rec = tiny_trainer(small_corpus, run, "max_steps=10")
    metrics = MetricsFile(run / "metrics.jsonl")
    trainer.bus.subscribe(metrics)
    trainer.run()
    metrics.close()
    kinds = [type(e).__name__ for e in rec.events]
    assert kinds[0] == "RunStarted" and kinds[-1] == "Finished"
    evals = rec.of(ev.Eval)
    assert [e.step for e in evals] == [5, 10]
    assert all(e.val_ppl == pytest.approx(math.exp(e.val_loss)) for e in evals)
    assert len(rec.of(ev.Sample)) == 2 and len(rec.of(ev.Health)) == 5
    finished = rec.of(ev.Finished)[0]
    assert finished.status == "completed" and finished.best_val_bpc == min(e.val_bpc for e in evals)
    for name in ("last.safetensors", "best.safetensors", "train_state.safetensors", "config.toml"):
        assert (run / name).is_file()
        assert (run / name).stat().st_mode & 0o777 == FILE_MODE  # readable by whoever may read the run
    # metrics.jsonl holds the same events, one JSON object per line.
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(rec.events)
    assert [json.loads(line)["event"] for line in lines] == [e.kind for e in rec.events]
    assert [type(e) for e in read_events(run / "metrics.jsonl")] == [type(e) for e in rec.events]


def test_checkpoint_is_readable_with_plain_safetensors(small_corpus, tmp_path):
    run = tmp_path / "run"
    trainer, _ = tiny_trainer(small_corpus, run, "max_steps=5")
    trainer.run()
    with safe_open(str(run / "best.safetensors"), framework="pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
    model_config = json.loads(meta["model_config"])
    assert model_config["d_model"] == 32 and model_config["vocab_size"] == trainer.dataset.tokenizer.vocab_size
    tokenizer = json.loads(meta["tokenizer"])
    assert tokenizer["model"]["type"] == "BPE"
    assert json.loads(meta["train_config"])["data"]["source"] == str(small_corpus)
    assert json.loads(meta["step"]) == 5 and json.loads(meta["val_bpc"]) > 0
    assert meta["data_fingerprint"].strip('"') == trainer.dataset.corpus.fingerprint
    assert "tok_emb.weight" in keys and "head.weight" not in keys  # tied head saved once


def test_controls_from_another_thread(small_corpus, tmp_path):
    trainer, rec = tiny_trainer(small_corpus, tmp_path / "r", "eval_interval=100000")
    paused = threading.Event()
    steps_at_pause = []

    def on_event(e):
        if isinstance(e, ev.Status) and e.state == "paused":
            paused.set()

    trainer.bus.subscribe(on_event)
    trainer.start()
    while not rec.of(ev.Step):
        trainer.join(0.01)
    trainer.pause()
    assert paused.wait(10)
    steps_at_pause.append(len(rec.of(ev.Step)))
    trainer.request("save")
    trainer.request("sample", prompt="SPEAKER")
    trainer.request("eval")
    trainer.join(1.0)
    assert len(rec.of(ev.Step)) == steps_at_pause[0]  # nothing trains while paused
    assert any(e.reason == "request" for e in rec.of(ev.CheckpointSaved))
    assert "SPEAKER" in [s.prompt for s in rec.of(ev.Sample)]
    assert rec.of(ev.Eval)
    trainer.resume()
    while len(rec.of(ev.Step)) < steps_at_pause[0] + 2:
        trainer.join(0.01)
    trainer.stop()
    trainer.join(30)
    assert not trainer.thread.is_alive()
    assert trainer.result.reason == "stopped" and trainer.result.status == "stopped"


def test_failure_in_the_loop_is_reported(small_corpus, tmp_path):
    trainer, rec = tiny_trainer(small_corpus, tmp_path / "r", "max_steps=5")
    plant_failure(trainer)
    trainer.run()
    failed = rec.of(ev.Failed)
    assert failed and "planted failure" in failed[0].error and "Traceback" in failed[0].traceback
    assert isinstance(trainer.error, RuntimeError)


def test_batch_tokens_sets_rows_per_step_from_seq_len(small_corpus, tmp_path):
    trainer, rec = tiny_trainer(small_corpus, tmp_path / "r", "batch_tokens=64", "max_steps=2", "sample_tokens=0")
    assert trainer.rows_per_step == 64 // 16
    trainer.run()
    assert all(s.tokens - prev <= 64 for s, prev in zip(rec.of(ev.Step), [0, rec.of(ev.Step)[0].tokens], strict=True))
    assert rec.of(ev.Step)[0].tokens == 64  # packed rows are full: 4 rows x 16 targets


def test_a_stream_evaluation_scores_every_val_token_from_the_text_before_it(small_corpus, tmp_path):
    trainer, recorder = tiny_trainer(small_corpus, tmp_path / "run", "val_context=stream", "max_steps=3")
    trainer.run()
    from tuilm.train.evaluate import evaluate

    model, val = trainer.model, trainer.dataset.val
    stream = evaluate(model, trainer.dataset, "cpu")
    # By hand: consecutive windows of seq_len targets over [eos] d0 eos d1 ..., each window's last input the
    # next one's first, so every token after the first is predicted once, across document ends.
    ids, block, nats = torch.from_numpy(val.stream.astype("int64")), model.cfg.seq_len, 0.0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(ids) - 1, block):
            piece = ids[start : start + block + 1]
            logits = model(piece[None, :-1])
            nats += float(torch.nn.functional.cross_entropy(logits[0], piece[1:], reduction="sum"))
    assert stream.tokens == val.n_tokens
    assert stream.loss == pytest.approx(nats / val.n_tokens, rel=1e-5)
    # The run's own evaluations were the stream's: its last eval event holds the same figure.
    last = [e for e in recorder.events if isinstance(e, ev.Eval)][-1]
    assert last.val_loss == pytest.approx(stream.loss, rel=1e-5)


def test_tuilm_eval_scores_a_runs_own_val_split_as_the_run_did(small_corpus, tmp_path, capsys):
    from tuilm.commands.eval import eval_command

    trainer, recorder = tiny_trainer(small_corpus, tmp_path / "run", "val_context=stream", "max_steps=3")
    trainer.run()
    eval_command(tmp_path / "run" / "last.safetensors", None, "cpu", as_json=True)
    doc = json.loads(capsys.readouterr().out)
    last = [e for e in recorder.events if isinstance(e, ev.Eval)][-1]
    assert doc["data"].endswith("scored as one stream)")
    assert doc["val_loss"] == pytest.approx(last.val_loss, rel=1e-5)
