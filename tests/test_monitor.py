"""tuilm.Monitor in a plain PyTorch loop, and the Hugging Face and Lightning callbacks that attach it: the same
metrics.jsonl as tuilm's trainer, read back by `tuilm health` and `tuilm watch`."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from tests.helpers import run_tuilm
from tuilm.config import ModelConfig
from tuilm.errors import ConfigError
from tuilm.model import GPT
from tuilm.monitor import Monitor
from tuilm.train import events as ev
from tuilm.train.layer_groups import LayerGroups
from tuilm.train.metrics_file import read_events

VOCAB = 64


class Block(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.attn = nn.Linear(d, d)  # stands in for attention: the grouping is by module tree, not by kind
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.ReLU(), nn.Linear(4 * d, d))

    def forward(self, x):
        x = x + self.attn(self.ln(x))
        return x + self.mlp(x)


class TinyLM(nn.Module):
    """Not tuilm's GPT: other names, a wrapper module, blocks in a ModuleList."""

    def __init__(self, d: int = 32, layers: int = 3):
        super().__init__()
        self.body = nn.ModuleDict(
            {"wte": nn.Embedding(VOCAB, d), "layers": nn.ModuleList(Block(d) for _ in range(layers))}
        )
        self.out = nn.Linear(d, VOCAB)

    def forward(self, idx):
        x = self.body["wte"](idx)
        for block in self.body["layers"]:
            x = block(x)
        return self.out(x)


def batch(generator, rows: int = 8, length: int = 16):
    # A learnable pattern: each token is the previous plus one.
    start = torch.randint(0, VOCAB, (rows, 1), generator=generator)
    seq = (start + torch.arange(length + 1)) % VOCAB
    return seq[:, :-1], seq[:, 1:]


def plain_loop(run_dir, steps: int, explode_at: int | None = None, config=None, **options):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = TinyLM()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    with Monitor(model, optimizer, run_dir=run_dir, config=config or {"interval": 5}, **options) as mon:
        for step in range(1, steps + 1):
            x, y = batch(g)
            loss = nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
            scale = 1e7 if step == explode_at else 1.0  # a planted explosion: one step's gradients blown up
            (loss * scale).backward()
            mon.before_step()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            mon.step(loss, tokens=y.numel())
            optimizer.zero_grad()
            if step % 10 == 0:
                mon.eval(loss.item() + 0.1)
    return mon


# tuilm's GPT: both embeddings one group, each block's attention, MLP (the gate too) and its two norms, then the
# final norm and the untied head.
GPT_GROUPS = {
    "tok_emb.weight": "embedding",
    "pos_emb.weight": "embedding",
    **{
        f"blocks.{i}.{part}.weight": f"block{i}.{group}"
        for i in range(2)
        for part, group in (
            ("norm1", "norm"),
            ("norm2", "norm"),
            ("attn.qkv", "attn"),
            ("attn.proj", "attn"),
            ("mlp.fc", "mlp"),
            ("mlp.gate", "mlp"),
            ("mlp.proj", "mlp"),
        )
    },
    "norm_f.weight": "norm_f",
    "head.weight": "head",
}


def test_layer_groups_of_tuilms_gpt_are_the_trainers(tmp_path):
    seen = set()
    for overrides in ({}, {"pos": "rope", "act": "swiglu", "norm": "rmsnorm", "tie_embeddings": False}):
        model = GPT(ModelConfig(vocab_size=50, seq_len=16, d_model=16, n_layers=2, n_heads=2, **overrides))
        groups = LayerGroups(model)
        for name, _ in model.named_parameters():
            assert groups(name) == GPT_GROUPS[name], name
            seen.add(name)
    assert seen == set(GPT_GROUPS)  # learned positions, the swiglu gate and the untied head were all there


def test_layer_groups_of_another_model_come_from_its_module_tree():
    groups = LayerGroups(TinyLM())
    names = dict.fromkeys(groups(n) for n, _ in TinyLM().named_parameters())
    assert list(names) == [
        "embedding",
        *(f"block{i}.{part}" for i in range(3) for part in ("norm", "attn", "mlp")),
        "out",
    ]


def test_plain_loop_with_a_planted_explosion_alerts_and_health_shows_it(tmp_path):
    run = tmp_path / "mine"
    plain_loop(run, 40, explode_at=30)
    events = read_events(run / "metrics.jsonl")
    assert isinstance(events[0], ev.RunStarted) and isinstance(events[-1], ev.Finished)
    steps = [e for e in events if isinstance(e, ev.Step)]
    assert [s.step for s in steps] == list(range(1, 41))
    assert steps[-1].tokens == 40 * 8 * 16 and steps[-1].loss < steps[0].loss
    health = [e for e in events if isinstance(e, ev.Health)]
    assert [h.step for h in health] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert "block2.mlp" in health[0].layers and health[0].blocks == ["block0", "block1", "block2"]
    # Update ratios are real measurements of the step taken (a copy of the weights before it), not placeholders.
    assert all(-6 < r < 0 for r in health[0].update_ratio)
    assert all(math.isfinite(s) for s in health[0].act_std) and all(d is not None for d in health[0].dead_fraction)
    alerts = [e for e in events if isinstance(e, ev.Alert)]
    assert [(a.step, a.code) for a in alerts if a.code == "exploding"] == [(30, "exploding")]
    assert not [a for a in alerts if a.step < 30]  # silent while healthy
    assert [e.step for e in events if isinstance(e, ev.Eval)] == [10, 20, 30, 40]

    out = run_tuilm("health", str(run), env={**os.environ, "COLUMNS": "250"}, timeout=60)  # no wrapped cells
    assert out.returncode == 0, out.stderr
    assert "exploding" in out.stdout and "block1.attn" in out.stdout and "is above the limit" in out.stdout


def test_step_context_and_no_before_step_both_measure(tmp_path):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = TinyLM(layers=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with Monitor(model, optimizer, tmp_path / "a", {"interval": 2}) as mon:
        for i in range(6):
            x, y = batch(g)
            loss = nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
            loss.backward()
            if i % 2:
                with mon.step_context(loss, tokens=y.numel()):
                    optimizer.step()
            else:
                optimizer.step()
                mon.step(loss, tokens=y.numel())
            optimizer.zero_grad()
    health = [e for e in read_events(tmp_path / "a" / "metrics.jsonl") if isinstance(e, ev.Health)]
    assert [h.step for h in health] == [2, 4, 6]
    assert all(g > 0 for h in health for g in h.grad_norm)
    assert health[0].adam_m_norm and not any(health[0].adam_v_norm)  # SGD's momentum, no second moment


def test_a_non_finite_loss_is_an_alert_and_the_run_ends_diverged(tmp_path):
    model = TinyLM(layers=2)
    optimizer = torch.optim.AdamW(model.parameters())
    with Monitor(model, optimizer, tmp_path / "nan", {"interval": 0}) as mon:
        for _ in range(3):
            x, y = batch(torch.Generator().manual_seed(1))
            loss = nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten()) * float("nan")
            loss.backward()
            optimizer.step()
            mon.step(loss)
            optimizer.zero_grad()
    events = read_events(tmp_path / "nan" / "metrics.jsonl")
    assert any(isinstance(e, ev.Alert) and e.code == "nonfinite" for e in events)
    assert events[-1].status == "diverged"


def test_an_exception_in_the_loop_is_recorded_as_failed(tmp_path):
    model = TinyLM(layers=2)
    with pytest.raises(RuntimeError), Monitor(model, None, tmp_path / "f"):
        raise RuntimeError("boom")
    assert isinstance(read_events(tmp_path / "f" / "metrics.jsonl")[-1], ev.Failed)


def test_bad_health_settings_are_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown health setting 'intervall'"):
        Monitor(TinyLM(), None, tmp_path / "x", {"intervall": 5})


def test_import_tuilm_stays_light_and_monitor_is_lazy():
    code = (
        "import sys, tuilm; assert 'torch' not in sys.modules; from tuilm import Monitor; assert 'torch' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- Hugging Face -------------------------------------------------------------------------------------------------


def test_hf_callback_on_a_tiny_gpt2_writes_per_layer_metrics(tmp_path):
    transformers = pytest.importorskip("transformers", reason="the HF callback needs transformers (dev extra)")
    from tuilm.integrations.hf import TuilmCallback

    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=16, n_layer=2, n_head=2)
    model = transformers.GPT2LMHeadModel(config)
    g = torch.Generator().manual_seed(0)
    rows = [batch(g, rows=1)[0][0] for _ in range(32)]
    dataset = [{"input_ids": r, "labels": r} for r in rows]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf-out"),
        max_steps=12,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    run = tmp_path / "hf"
    callback = TuilmCallback(run, config={"interval": 4})
    trainer = transformers.Trainer(model=model, args=args, train_dataset=dataset, callbacks=[callback])
    trainer.train()
    events = read_events(run / "metrics.jsonl")
    steps = [e for e in events if isinstance(e, ev.Step)]
    assert [s.step for s in steps] == list(range(1, 13))
    assert all(math.isfinite(s.loss) and s.loss > 0 for s in steps) and steps[0].tokens == 4 * 16
    assert abs(steps[0].loss - math.log(VOCAB)) < 0.5  # the model's own loss, captured from its output
    health = [e for e in events if isinstance(e, ev.Health)]
    assert [h.step for h in health] == [4, 8, 12]
    layers = health[-1].layers
    assert {"embedding", "block0.attn", "block0.mlp", "block0.norm", "block1.attn", "ln_f"} <= set(layers)
    assert all(g > 0 and math.isfinite(g) for g in health[-1].grad_norm)
    assert health[-1].blocks == ["block0", "block1"] and all(math.isfinite(s) for s in health[-1].mlp_std)
    assert isinstance(events[-1], ev.Finished)


# -- Lightning ----------------------------------------------------------------------------------------------------


def test_lightning_callback_writes_per_layer_metrics(tmp_path):
    pl = pytest.importorskip(
        "lightning.pytorch", reason="lightning is not installed (pip install lightning; not in the dev extra)"
    )
    from tuilm.integrations.lightning import TuilmCallback

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.lm = TinyLM(layers=2)

        def training_step(self, b, i):
            x, y = b
            return nn.functional.cross_entropy(self.lm(x).flatten(0, 1), y.flatten())

        def validation_step(self, b, i):
            x, y = b
            self.log("val_loss", nn.functional.cross_entropy(self.lm(x).flatten(0, 1), y.flatten()))

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

    g = torch.Generator().manual_seed(0)
    data = [batch(g, rows=4) for _ in range(12)]
    loader = torch.utils.data.DataLoader(data, batch_size=None)
    trainer = pl.Trainer(
        max_steps=12,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        val_check_interval=6,
        num_sanity_val_steps=0,
        callbacks=[TuilmCallback(tmp_path / "pl", config={"interval": 4})],
    )
    trainer.fit(Module(), loader, loader)
    events = read_events(tmp_path / "pl" / "metrics.jsonl")
    assert [e.step for e in events if isinstance(e, ev.Step)] == list(range(1, 13))
    health = [e for e in events if isinstance(e, ev.Health)]
    assert [h.step for h in health] == [4, 8, 12]
    assert {"embedding", "block0.attn", "block1.mlp", "out"} <= set(health[0].layers)
    assert [e.step for e in events if isinstance(e, ev.Eval)] == [6, 12]
    assert isinstance(events[-1], ev.Finished)


# -- tuilm watch ----------------------------------------------------------------------------------------------------


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_watch_follows_a_run_written_by_the_monitor(tmp_path):
    import time

    from tuilm.tui.app import Dashboard
    from tuilm.tui.header import RunHeader
    from tuilm.tui.health_panels import GradHeatmap

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = TinyLM(layers=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    run = tmp_path / "mine"
    mon = Monitor(model, optimizer, run, {"interval": 5}, max_steps=30)

    def train(n: int) -> None:
        for _ in range(n):
            x, y = batch(g)
            loss = nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
            loss.backward()
            optimizer.step()
            mon.step(loss, tokens=y.numel())
            optimizer.zero_grad()

    async def until(pilot, condition, what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await pilot.pause(0.05)

    train(10)
    app = Dashboard(follow=run / "metrics.jsonl")
    async with app.run_test(size=(160, 48)) as pilot:
        header = app.query_one(RunHeader)
        await until(pilot, lambda: header.step is not None and header.step.step == 10, "the first 10 steps")
        assert header.run is not None and header.run.recipe == "TinyLM"
        train(20)  # the run goes on while the dashboard follows it
        mon.eval(2.0)
        mon.close()
        await until(pilot, lambda: app.ended, "the end of the run")
        assert header.step.step == 30
        heatmap = app.query_one(GradHeatmap)
        assert "block1.mlp" in app.store.health[-1].layers and heatmap is not None
        await pilot.press("q")
    assert app.return_code == 0


# -- the reference's examples (docs/health.md) run as written ---------------------------------------------------------------------------


def readme_example(name: str) -> str:
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "health.md").read_text(encoding="utf-8")
    block = text.split(f"<!-- example: {name} -->\n```python\n", 1)[1]
    return block.split("```", 1)[0]


@pytest.mark.parametrize("name, module", [("plain", "torch"), ("hf", "transformers"), ("lightning", "lightning")])
def test_readme_examples_run_as_written(name, module, tmp_path):
    pytest.importorskip(module, reason=f"the {name} example needs {module}")
    out = subprocess.run([sys.executable, "-c", readme_example(name)], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "runs" / {"plain": "mine", "hf": "hf", "lightning": "pl"}[name]
    events = read_events(run / "metrics.jsonl")
    steps = [e for e in events if isinstance(e, ev.Step)]
    assert len(steps) == (200 if name == "plain" else 50) and isinstance(events[-1], ev.Finished)
    assert next(e for e in events if isinstance(e, ev.Health)).blocks  # the repeated blocks were found


def test_a_models_own_logits_and_attentions_feed_log_z_and_entropy_alerts(tmp_path):
    # Another model's loop passes what tuilm's GPT measures itself: the output logits and attention probabilities.
    # Planted at step 20: logits shifted by 50 (log Z drifts by 50 > 20) and attention on one key (entropy 0).
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = TinyLM()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    with Monitor(model, optimizer, run_dir=tmp_path / "own", config={"interval": 5}) as mon:
        for step in range(1, 26):
            x, y = batch(g)
            logits = model(x)
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
            loss.backward()
            optimizer.step()
            rows, length = x.shape
            uniform = torch.full((rows, 2, length, length), 1.0 / length)
            one_key = torch.zeros_like(uniform)
            one_key[..., 0] = 1.0
            planted = step >= 20
            attentions = [one_key if planted else uniform] * 3
            mon.step(loss, tokens=y.numel(), logits=logits + (50 if planted else 0), attentions=attentions)
            optimizer.zero_grad()
    events = read_events(tmp_path / "own" / "metrics.jsonl")
    health = [e for e in events if isinstance(e, ev.Health)]
    assert [h.step for h in health] == [5, 10, 15, 20, 25]
    assert health[0].log_z is not None and math.isfinite(health[0].log_z)
    assert health[0].attn_entropy == pytest.approx([math.log(16)] * 3, rel=1e-5)
    alerts = {(a.code, a.step) for a in events if isinstance(a, ev.Alert)}
    assert ("logz_drift", 20) in alerts and not any(code == "logz_drift" and s < 20 for code, s in alerts)
    assert ("entropy_collapse", 20) in alerts and not any(c == "entropy_collapse" and s < 20 for c, s in alerts)
