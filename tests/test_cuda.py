"""The paths of tests/test_gpu_paths.py on a real CUDA GPU, at CUDA's defaults (compile = auto: on; dtype = auto:
bf16, or fp16 with a GradScaler without bf16). Skipped without CUDA: benchmarks/gpu_check.sh runs them on a GPU.
No GPU has run these yet (docs/gpu.md)."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import tiny_trainer
from tests.test_gpu_paths import QUIET, SHAPE, losses, oom_inside_the_block_above, split_run
from tuilm.train import events as ev

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

CUDA = ("device=cuda",)
# CUDA's kernels (an embedding's backward adds with atomics) need not give the same bits twice: a resume is held
# to what two identical CUDA runs give, not to the CPU's exact equality
AGAIN = 1e-4


def test_the_cuda_defaults_compile_under_autocast_and_resume(small_corpus, tmp_path):
    common = (*SHAPE, *QUIET, *CUDA, "max_steps=6")
    straight, rec = tiny_trainer(small_corpus, tmp_path / "straight", *common)
    assert straight.device.type == "cuda" and straight.forward is not straight.ddp  # compile = auto: on
    assert straight.precision.name in ("bf16", "fp16")
    straight.run()
    assert straight.result.status == "completed", straight.error
    reference = losses(rec)
    assert len(reference) == 6 and all(torch.isfinite(torch.tensor(reference)))
    started = rec.of(ev.RunStarted)[0]
    assert started.device.startswith("cuda") and started.dtype == straight.precision.name and started.ranks == 1
    resumed, _, second = split_run(small_corpus, tmp_path / "split", 3, *common)
    assert resumed == pytest.approx(reference, abs=AGAIN, rel=0)
    if second.scaler:
        assert second.scaler.state_dict() == straight.scaler.state_dict()


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_compiled_matches_eager_on_cuda(small_corpus, tmp_path, dtype):
    if dtype == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    common = (*SHAPE, *QUIET, *CUDA, f"dtype={dtype}", "max_steps=4")
    eager, eager_rec = tiny_trainer(small_corpus, tmp_path / "eager", *common, "compile=false")
    eager.run()
    compiled, rec = tiny_trainer(small_corpus, tmp_path / "compiled", *common, "compile=true")
    compiled.run()
    assert compiled.result.status == "completed", compiled.error
    # fused kernels round differently: fp32 (TF32 matmuls on both) to 1e-3, half precision to 1e-2
    assert losses(rec) == pytest.approx(losses(eager_rec), abs=1e-3 if dtype == "fp32" else 1e-2, rel=0)


def test_search_and_healing_on_cuda(small_corpus, tmp_path):
    common = (*SHAPE[:4], *QUIET, *CUDA, "batch_size=8", "max_steps=4", "micro_batch_size=auto")
    trainer, rec = tiny_trainer(small_corpus, tmp_path / "run", *common)
    limit = [4]
    sizes = oom_inside_the_block_above(trainer, limit)
    trainer.bus.subscribe(lambda e: limit.__setitem__(0, 3) if isinstance(e, ev.Step) and e.step == 2 else None)
    trainer.run()
    assert trainer.result.status == "completed", trainer.error
    assert sizes[:3] == [8, 3, 4]  # the search runs on CUDA by default
    messages = [e.message for e in rec.of(ev.Log)]
    assert "micro-batch auto: 4 rows per forward pass, 2 per step (8 rows per step)" in messages
    assert "out of memory at micro-batch 4 rows: now 2, step 3 redone" in messages
