"""Issue 22, section 3: the paths a CUDA run takes by default, run here on the CPU. torch.compile (inductor on
the CPU) for every model variant, bf16 autocast, fp16 with a GradScaler, and the out-of-memory healing through a
compiled forward pass. docs/gpu.md says what these cover and what only a GPU can show."""

from __future__ import annotations

import os

import pytest
import torch

from tests.helpers import tiny_trainer
from tuilm.checkpoint.train_state import load_train_state
from tuilm.train import accel
from tuilm.train import events as ev

# Small enough that inductor compiles each variant in seconds; one micro-batch shape, so one compile a variant.
SHAPE = ("seq_len=8", "d_model=16", "n_layers=1", "n_heads=2", "batch_size=4", "micro_batch_size=4")
QUIET = ("eval_interval=1000", "checkpoint_interval=1000", "health.interval=1000", "sample_tokens=0")

# Every value of pos, act and norm, qk_norm and Muon, in as few models as cover them all. A compile is the
# expensive part: 60-140 s each on a busy 2-core machine (0.2 s for a second model of the same shape), so the
# first (today's default recipe's features) runs in every suite and the others with TUILM_COMPILE_ALL=1
# (benchmarks/gpu_check.sh sets it; docs/gpu.md).
COVER = [
    ("pos=learned", "act=gelu", "norm=layernorm"),
    ("pos=sinusoidal", "act=relu", "norm=rmsnorm", "qk_norm=true"),
    ("pos=rope", "act=swiglu", "norm=layernorm", "optimizer=muon"),
    ("pos=alibi", "act=relu2", "norm=rmsnorm"),
    ("pos=rope", "act=gelu_tanh", "norm=rmsnorm", "qk_norm=true", "optimizer=muon"),
]


def losses(rec) -> list[float]:
    return [s.loss for s in rec.of(ev.Step)]


def split_run(corpus, run_dir, stop_at: int, *overrides):
    """Train to `stop_at`, stop, resume to the end: the Step losses of both sessions and the resumed trainer."""
    first, rec1 = tiny_trainer(corpus, run_dir, *overrides)
    first.bus.subscribe(lambda e: first.stop() if isinstance(e, ev.Step) and e.step == stop_at else None)
    first.run()
    assert first.result.reason == "stopped" and first.result.step == stop_at
    second, rec2 = tiny_trainer(corpus, run_dir, *overrides, resume=True)
    second.run()
    assert second.result.status == "completed", second.error
    return losses(rec1) + losses(rec2), first, second


# -- torch.compile ---------------------------------------------------------------------------------------------


ALL_VARIANTS = pytest.mark.skipif(
    not os.environ.get("TUILM_COMPILE_ALL"), reason="some 60-100 s each on 2 busy cores: TUILM_COMPILE_ALL=1 runs it"
)


@pytest.mark.parametrize(
    "variant",
    [
        pytest.param(v, marks=[] if i == 0 else [pytest.mark.slow, ALL_VARIANTS], id="-".join(v))
        for i, v in enumerate(COVER)
    ],
)
def test_a_compiled_model_trains_as_the_eager_one_and_resumes_exactly(small_corpus, tmp_path, variant):
    common = (*SHAPE, *QUIET, *variant, "max_steps=4")
    eager, eager_rec = tiny_trainer(small_corpus, tmp_path / "eager", *common, "compile=false")
    eager.run()
    compiled, rec = tiny_trainer(small_corpus, tmp_path / "compiled", *common, "compile=true")
    assert compiled.forward is not compiled.ddp  # compiled indeed
    compiled.run()
    assert compiled.result.status == "completed", compiled.error
    reference = losses(eager_rec)
    assert len(reference) == 4
    assert losses(rec) == pytest.approx(reference, abs=1e-4, rel=0)
    resumed, _, _ = split_run(small_corpus, tmp_path / "split", 2, *common, "compile=true")
    assert resumed == pytest.approx(losses(rec), abs=1e-6, rel=0)  # a resume of a compiled run is exact


def test_the_covering_set_covers_every_choice():
    from tuilm.model.config import ACT_CHOICES, NORM_CHOICES, POS_CHOICES

    settings = {s for variant in COVER for s in variant}
    for key, choices in (("pos", POS_CHOICES), ("act", ACT_CHOICES), ("norm", NORM_CHOICES)):
        assert {f"{key}={c}" for c in choices} <= settings, key
    assert {"qk_norm=true", "optimizer=muon"} <= settings


# -- mixed precision: what CUDA's default (bf16) and a GPU without bf16 (fp16 + GradScaler) run -------------------


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_mixed_precision_trains_finite_and_resumes_exactly(small_corpus, tmp_path, dtype):
    common = (*SHAPE, *QUIET, f"dtype={dtype}", "max_steps=6")
    straight, rec = tiny_trainer(small_corpus, tmp_path / "straight", *common)
    seen = []
    straight.model.blocks[0].mlp.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    straight.run()
    assert straight.result.status == "completed", straight.error
    assert straight.precision.name == dtype and seen and set(seen) == {straight.precision.dtype}
    reference = losses(rec)
    assert len(reference) == 6 and all(torch.isfinite(torch.tensor(reference)))
    assert reference[-1] < reference[0]
    resumed, first, second = split_run(small_corpus, tmp_path / "split", 3, *common)
    assert resumed == pytest.approx(reference, abs=1e-6, rel=0)
    if dtype == "fp16":
        steps = rec.of(ev.Step)
        assert all(s.loss_scale and s.loss_scale > 1 for s in steps)  # the GradScaler ran, and is reported
        saved, _ = load_train_state(tmp_path / "split" / "train_state.safetensors", first.optimizer)
        assert saved["scaler"] == second.scaler.state_dict() == straight.scaler.state_dict()
        assert saved["scaler"]["_growth_tracker"] == 6  # restored at 3, then 3 more clean steps: not a fresh one
        notes = [e.message for e in rec.of(ev.Log) if e.message.startswith("fp16 on the CPU")]
        assert len(notes) == 1
    else:
        assert straight.scaler is None and rec.of(ev.Step)[0].loss_scale is None


# -- out of memory inside a compiled forward pass ----------------------------------------------------------------


def oom_inside_the_block_above(trainer, limit: list[int]) -> list[int]:
    """A forward hook on the first block raises torch.OutOfMemoryError, as CUDA's allocator would mid-forward, for
    training passes of more than limit[0] rows; returns the sizes of the training passes. The hook runs outside
    the compiled graph (dynamo.disable), at run time, as an allocation inside a compiled kernel fails."""
    # dynamo reuses a graph compiled for another model of this shape without checking its hooks (even with
    # skip_nnmodule_hook_guards off): forget the compiled graphs, so that the injecting hook is compiled in
    torch._dynamo.reset()
    sizes: list[int] = []

    @torch._dynamo.disable
    def hook(module, inputs, output):
        if torch.is_grad_enabled():
            sizes.append(output.shape[0])
            if output.shape[0] > limit[0]:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")

    trainer.model.blocks[0].register_forward_hook(hook)
    return sizes


@pytest.mark.slow  # two compiles (the searched micro-batch, then the healed one): some 90 s on 2 busy cores
def test_the_micro_batch_search_and_the_healing_work_through_a_compiled_forward(small_corpus, tmp_path, monkeypatch):
    # 8 rows a step, searched down to 4, then healed down to 2 inside the compiled forward
    common = (*SHAPE[:4], *QUIET, "batch_size=8", "max_steps=4", "micro_batch_size=auto")
    eager, eager_rec = tiny_trainer(small_corpus, tmp_path / "eager", *common, "compile=false")
    eager.run()  # on the CPU "auto" is no search: one pass of 8 rows
    monkeypatch.setattr(accel, "SEARCH_DEVICES", ("cpu",))  # searched as on CUDA
    trainer, rec = tiny_trainer(small_corpus, tmp_path / "compiled", *common, "compile=true")
    limit = [4]
    sizes = oom_inside_the_block_above(trainer, limit)
    trainer.bus.subscribe(lambda e: limit.__setitem__(0, 3) if isinstance(e, ev.Step) and e.step == 2 else None)
    trainer.run()
    assert trainer.result.status == "completed", trainer.error
    assert sizes[:3] == [8, 3, 4]  # the search: the first probe, then bisection
    assert sizes[3:7] == [4, 4, 4, 4]  # steps 1 and 2 at 4 + 4 rows, through the compiled model
    messages = [e.message for e in rec.of(ev.Log)]
    assert "micro-batch auto: 4 rows per forward pass, 2 per step (8 rows per step)" in messages
    assert "out of memory at micro-batch 4 rows: now 2, step 3 redone" in messages
    assert sizes[7:] == [4] + [2] * 8 and trainer.batches.micro == 2  # the failed pass, then steps 3 and 4
    assert losses(rec) == pytest.approx(losses(eager_rec), abs=1e-4, rel=0)


# -- benchmarks/gpu_check.sh and what a run records -------------------------------------------------------------


def test_gpu_check_parses_and_without_cuda_says_so_and_measures_nothing(tmp_path):
    import subprocess

    from tests.conftest import REPO

    script = REPO / "benchmarks" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    head = script.read_text(encoding="utf-8").split("\nset -u", 1)[0]
    for part in ("tests", "gpu.py", "tiny_shakespeare_gpu", "vs_nanogpt.py", "8 minutes", "JSON"):
        assert part in head, part  # it says at the top what it will measure
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is here: the script would measure it")
    out = tmp_path / "figures.json"
    result = subprocess.run(["bash", str(script), str(out)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and not out.exists()
    assert result.stderr.strip() == "gpu_check.sh needs a CUDA GPU, and torch sees none here (nothing measured)"


def test_runs_show_the_ranks_device_and_dtype():
    from tuilm.sweep.runinfo import hardware

    def started(**kw):
        base = dict(run_dir="r", name="r", recipe="x", config={}, params=1, params_no_embeddings=1, data={})
        return ev.RunStarted(**base, max_steps=1, **kw)

    assert hardware(started(device="cpu", dtype="fp32")) == "cpu fp32"
    assert hardware(started(device="cuda:0", dtype="bf16", ranks=2)) == "2 x cuda:0 bf16"
