"""Issue 12, sections 3 and 4: micro_batch_size = "auto", activation checkpointing, compile = "auto", the
device notices and bf16 autocast on the CPU."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import tiny_config, tiny_trainer
from tuilm import device as device_mod
from tuilm.commands.train import TrainOptions, cli_overrides, launcher_args
from tuilm.config import apply_overrides, from_dict
from tuilm.errors import ConfigError
from tuilm.model import GPT
from tuilm.model.config import ModelConfig
from tuilm.train import accel
from tuilm.train import events as ev
from tuilm.train.batches import initial_micro, rows_per_rank

COMMON = ("max_steps=4", "batch_size=8", "eval_interval=4", "health.interval=1000", "sample_tokens=0")


def oom_in_training_above(monkeypatch, rows: int) -> list[int]:
    """GPT's forward raises torch.OutOfMemoryError, as CUDA would, for training passes (gradients on) of more
    than `rows` rows; returns the sizes of those passes."""
    forward, sizes = GPT.forward, []

    def limited(self, x, *args, **kwargs):
        if torch.is_grad_enabled():
            sizes.append(x.shape[0])
            if x.shape[0] > rows:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return forward(self, x, *args, **kwargs)

    monkeypatch.setattr(GPT, "forward", limited)
    return sizes


# -- micro_batch_size = "auto" ----------------------------------------------------------------------------------


def test_candidates_are_every_ceil_division_largest_first():
    assert accel.candidates(8) == [8, 4, 3, 2, 1]
    assert accel.candidates(10) == [10, 5, 4, 3, 2, 1]
    assert accel.candidates(1) == [1]
    for rows in range(1, 80):
        expected = sorted({-(-rows // k) for k in range(1, rows + 1)}, reverse=True)
        assert accel.candidates(rows) == expected


def test_the_bisection_finds_the_largest_fitting_size():
    for rows in range(1, 50):
        sizes = accel.candidates(rows)
        for limit in range(0, rows + 2):
            tried = []

            def fits(n, limit=limit, tried=tried):
                tried.append(n)
                return n <= limit

            best = accel.largest_fitting(sizes, fits)
            assert best == max((s for s in sizes if s <= limit), default=None), (rows, limit)
            assert len(tried) <= 2 + len(sizes).bit_length()  # bisected, not walked


def test_auto_picks_the_largest_fitting_micro_batch_and_trains_as_that_size(small_corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(accel, "SEARCH_DEVICES", ("cpu",))  # searched as on CUDA
    reference, ref_rec = tiny_trainer(small_corpus, tmp_path / "ref", *COMMON, "micro_batch_size=3")
    reference.run()
    sizes = oom_in_training_above(monkeypatch, 3)
    auto, rec = tiny_trainer(small_corpus, tmp_path / "auto", *COMMON, "micro_batch_size=auto")
    assert auto.tcfg.micro_batch_size == "auto"
    auto.run()
    assert auto.result.status == "completed"
    assert auto.batches.micro == 3  # 8 rows per step: 8 and 4 do not fit, 3 does
    assert sizes[:3] == [8, 3, 4]  # the first probe, then bisection; then training at 3 rows
    assert set(sizes[3:]) == {3, 2}  # 8 rows = 3 + 3 + 2
    notes = [e.message for e in rec.of(ev.Log) if "micro-batch auto" in e.message]
    assert notes == ["micro-batch auto: 3 rows per forward pass, 3 per step (8 rows per step)"]
    assert not [e for e in rec.of(ev.Log) if "out of memory" in e.message]
    ref_losses = [s.loss for s in ref_rec.of(ev.Step)]
    assert [s.loss for s in rec.of(ev.Step)] == pytest.approx(ref_losses, abs=1e-6)
    for a, b in zip(reference.model.parameters(), auto.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_auto_fails_clearly_when_not_even_one_row_fits(small_corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(accel, "SEARCH_DEVICES", ("cpu",))
    oom_in_training_above(monkeypatch, 0)
    trainer, _ = tiny_trainer(small_corpus, tmp_path / "run", *COMMON)
    trainer.run()
    assert isinstance(trainer.error, torch.OutOfMemoryError)
    assert "micro-batch of 1 row" in str(trainer.error)


def test_auto_on_the_cpu_means_no_accumulation(small_corpus, tmp_path, monkeypatch):
    sizes = oom_in_training_above(monkeypatch, 1000)
    trainer, rec = tiny_trainer(small_corpus, tmp_path / "run", *COMMON)
    assert trainer.tcfg.micro_batch_size == "auto"  # the default
    trainer.run()
    assert trainer.batches.micro == 8 and set(sizes) == {8}
    assert not [e for e in rec.of(ev.Log) if "micro-batch auto" in e.message]


def test_micro_batch_size_takes_auto_or_a_count():
    assert from_dict({}).train.micro_batch_size == "auto"
    assert from_dict({"train": {"micro_batch_size": "AUTO"}}).train.micro_batch_size == "auto"
    assert from_dict({"train": {"micro_batch_size": 4}}).train.micro_batch_size == 4
    config = apply_overrides(from_dict({}), ["micro_batch_size=auto", "compile=auto"])
    assert (config.train.micro_batch_size, config.train.compile) == ("auto", "auto")
    assert apply_overrides(config, ["micro_batch_size=0"]).train.micro_batch_size == 0
    for bad in ("-1", "big", "2.5", "true"):
        with pytest.raises(ConfigError, match=r"train.micro_batch_size must be .* or auto"):
            apply_overrides(config, [f"micro_batch_size={bad}"])
    assert 'micro_batch_size = "auto"' in from_dict({}).to_toml()
    assert initial_micro("auto", rows_per_rank(32, 2)) == 16
    assert initial_micro(0, rows_per_rank(33, 2)) == 17
    assert initial_micro(64, rows_per_rank(32, 1)) == 32


# -- activation checkpointing ------------------------------------------------------------------------------------


@pytest.mark.parametrize("pos", ["learned", "rope", "alibi"])
def test_checkpointed_activations_give_the_plain_gradients(pos):
    cfg = ModelConfig(vocab_size=64, seq_len=16, d_model=32, n_layers=3, n_heads=2, dropout=0.1, pos=pos)
    torch.manual_seed(0)
    plain = GPT(cfg)
    recomputed = GPT(ModelConfig(**{**cfg.to_dict(), "checkpoint_activations": True}))
    recomputed.load_state_dict(plain.state_dict())
    x = torch.randint(0, 64, (4, 16))
    mask = torch.ones(4, 16, dtype=torch.bool)
    mask[0, 12:] = False
    grads = []
    for model in (plain, recomputed):
        torch.manual_seed(1)  # the same dropout masks; checkpointing replays them in the recomputation
        logits = model(x, key_padding_mask=mask)
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), x.flatten()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=0, msg=name)
    with torch.no_grad():  # no recomputation outside training: sampling and evaluation are unchanged
        recomputed.eval()
        torch.testing.assert_close(recomputed(x), plain.eval()(x))


def test_a_checkpointed_model_trains_as_the_plain_one(small_corpus, tmp_path):
    plain, plain_rec = tiny_trainer(small_corpus, tmp_path / "plain", *COMMON)
    plain.run()
    ckpt, rec = tiny_trainer(small_corpus, tmp_path / "ckpt", *COMMON, "model.checkpoint_activations=true")
    ckpt.run()
    assert ckpt.result.status == "completed"
    losses = [s.loss for s in rec.of(ev.Step)]
    assert losses == pytest.approx([s.loss for s in plain_rec.of(ev.Step)], abs=1e-5)
    assert losses[-1] < losses[0]


# -- compile, notices, bf16 on the CPU ------------------------------------------------------------------------


def test_compile_auto_means_on_for_cuda_only():
    assert accel.wants_compile("auto", torch.device("cuda"))
    assert not accel.wants_compile("auto", torch.device("cpu"))
    assert not accel.wants_compile("auto", torch.device("mps"))
    assert accel.wants_compile(True, torch.device("cpu"))
    assert not accel.wants_compile(False, torch.device("cuda"))
    assert from_dict({}).train.compile == "auto"
    assert apply_overrides(from_dict({}), ["compile=false"]).train.compile is False


def test_no_compile_reaches_the_setting_and_the_ranks():
    off = TrainOptions(source="x", compile=False)
    assert ("train.compile", False) in cli_overrides(off)
    assert "--no-compile" in launcher_args(off) and "--compile" not in launcher_args(off)
    assert not [o for o in cli_overrides(TrainOptions(source="x")) if o[0] == "train.compile"]
    assert "--compile" in launcher_args(TrainOptions(source="x", compile=True))


def test_bf16_on_the_cpu_trains_under_autocast_and_the_start_says_when_the_cpu_has_it(
    small_corpus, tmp_path, monkeypatch
):
    monkeypatch.setattr(accel, "cpu_native_bf16", lambda: True)
    fp32, rec32 = tiny_trainer(small_corpus, tmp_path / "fp32", *COMMON)
    assert fp32.precision.name == "fp32"  # the default stays fp32
    fp32.run()
    assert [e.message for e in rec32.of(ev.Log) if "native bf16" in e.message] == [
        "this CPU has native bf16 (AVX512-BF16/AMX): --set train.dtype=bf16 trains under bf16 autocast"
    ]
    bf16, rec = tiny_trainer(small_corpus, tmp_path / "bf16", *COMMON, "dtype=bf16")
    seen = []
    bf16.model.blocks[0].mlp.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    bf16.run()
    assert bf16.result.status == "completed" and bf16.precision.dtype == torch.bfloat16
    assert torch.bfloat16 in seen  # the matmuls ran in bf16
    assert not [e for e in rec.of(ev.Log) if "native bf16" in e.message]  # already on: nothing to offer
    monkeypatch.setattr(accel, "cpu_native_bf16", lambda: False)
    quiet, rec_quiet = tiny_trainer(small_corpus, tmp_path / "quiet", *COMMON, "max_steps=1")
    quiet.run()
    assert not [e for e in rec_quiet.of(ev.Log) if "native bf16" in e.message]


def test_cpu_flags_decide_native_bf16(monkeypatch):
    monkeypatch.setattr(device_mod, "_cpu_flags", lambda: {"avx2", "amx_bf16"})
    assert device_mod.cpu_native_bf16()
    monkeypatch.setattr(device_mod, "_cpu_flags", lambda: {"avx2", "avx512f"})
    assert not device_mod.cpu_native_bf16()


def test_bf16_on_a_cpu_without_native_bf16_trains_as_asked_and_says_why_it_is_slow(monkeypatch):
    monkeypatch.setattr(device_mod, "_cpu_flags", lambda: {"avx2", "avx512f"})
    precision = device_mod.pick_precision(torch.device("cpu"), "bf16")
    assert precision.name == "bf16" and "no native bf16" in precision.note and "train.dtype=fp32" in precision.note
    monkeypatch.setattr(device_mod, "_cpu_flags", lambda: {"avx2", "amx_bf16"})
    assert device_mod.pick_precision(torch.device("cpu"), "bf16").note == ""


def test_bf16_on_an_mps_without_it_falls_back_with_a_notice(monkeypatch):
    monkeypatch.setattr(device_mod, "_mps_autocast_works", lambda dtype=torch.float16: dtype == torch.float16)
    precision = device_mod.pick_precision(torch.device("mps"), "bf16")
    assert precision.name == "fp16" and precision.scaler
    assert precision.note.startswith("MPS: bf16 autocast needs macOS 14")
    monkeypatch.setattr(device_mod, "_mps_autocast_works", lambda dtype=torch.float16: False)
    assert device_mod.pick_precision(torch.device("mps"), "bf16").name == "fp32"


def test_a_tiny_config_still_loads_with_the_new_defaults(small_corpus):
    config = tiny_config(small_corpus)
    assert config.model.checkpoint_activations is False


# -- the dashboard under DDP ----------------------------------------------------------------------------------------


def test_under_ddp_rank_0_alone_builds_the_dashboard(small_corpus, tmp_path, monkeypatch):
    import sys

    from tuilm.commands import train as train_command
    from tuilm.train.distributed import Dist

    fronts = []
    monkeypatch.setattr(train_command, "run_dashboard", lambda trainer, compare=None: fronts.append("dashboard") or 0)
    monkeypatch.setattr(
        train_command, "run_headless", lambda trainer, progress=None, compare=None: fronts.append("none") or 0
    )
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
    config = tiny_config(small_corpus, "max_steps=1")
    for rank in (1, 0):
        options = TrainOptions(source=str(small_corpus))
        train_command.train_ranked(config, tmp_path / f"rank{rank}", options, Dist(rank, 2, rank))
    assert fronts == ["none", "dashboard"]
    assert "--headless" not in launcher_args(TrainOptions(source="x"))  # rank 0 decides by its terminal
    assert "--headless" in launcher_args(TrainOptions(source="x", headless=True))


def test_under_ddp_pause_and_evaluate_now_are_refused_with_a_warning(small_corpus, tmp_path):
    from tuilm.train.distributed import Dist

    trainer, rec = tiny_trainer(small_corpus, tmp_path / "run", *COMMON)
    trainer.dist = Dist(0, 2, 0)  # as rank 0 of two sees itself; nothing here runs a collective
    assert trainer.toggle_pause() is False and not trainer.paused
    trainer.request("eval")
    trainer._handle_requests()
    warnings = [e.message for e in rec.of(ev.Log) if e.level == "warning"]
    assert warnings == [
        "pause is not available under DDP (quit, save and sample are)",
        "evaluating now is not available under DDP (quit, save and sample are)",
    ]
    assert not rec.of(ev.Eval)
