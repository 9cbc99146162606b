"""Synthetic run folders for the board's tests and benchmarks/board_scale.py: a metrics.jsonl as a trainer writes
it (the recorded run's RunStarted and Health as templates, made-up curves), written fast enough for a million
lines. Step lines are formatted directly in to_dict's field order; a test checks they parse back as Steps."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path

from tests.events_factory import make_eval
from tuilm.train import events as ev
from tuilm.train.metrics_file import read_events

RECORDED = Path(__file__).parent / "data" / "recorded_run.jsonl"
_TEMPLATES: dict[str, ev.Event] = {}


def _template(kind: type[ev.Event]) -> ev.Event:
    if kind.kind not in _TEMPLATES:
        _TEMPLATES[kind.kind] = next(e for e in read_events(RECORDED) if isinstance(e, kind))
    return _TEMPLATES[kind.kind]


def line(event: ev.Event) -> str:
    return json.dumps(event.to_dict(), ensure_ascii=False, separators=(",", ":")) + "\n"


def started(name: str, lr: float = 3e-3, seed: int = 1337, max_steps: int = 1000, **config) -> ev.RunStarted:
    t = _template(ev.RunStarted)
    cfg = copy.deepcopy(t.config)
    cfg["train"].update(lr=lr, seed=seed, max_steps=max_steps)
    for key, value in config.items():
        section, _, name_ = key.partition(".")
        cfg[section][name_] = value
    fields = {"name": name, "run_dir": f"runs/{name}", "config": cfg, "max_steps": max_steps, "time": 0.0}
    return dataclasses.replace(t, **fields, flops_per_token=200_000)


def step_line(step: int, max_steps: int, loss: float, lr: float, grad_norm: float) -> str:
    tokens = step * 128
    elapsed = step * 0.05
    return (
        f'{{"event":"step","step":{step},"epoch":{step / 13:.4f},"tokens":{tokens},"loss":{loss!r},"lr":{lr!r},'
        f'"tokens_per_s":2560.0,"step_time":0.05,"grad_norm":{grad_norm!r},"clipped":false,"elapsed":{elapsed!r},'
        f'"progress":{step / max_steps!r},"loss_scale":null,"memory_mb":325.3,"skipped":false,"mfu":0.012}}\n'
    )


def curve(step: int, lr: float, seed: int) -> float:
    """A loss that falls faster with a larger learning rate, with a little seed noise."""
    return 2.0 + 3.5 * math.exp(-step * lr / 1.5) + 0.02 * math.sin(step * 0.1 + seed)


def health(step: int, scale: float = 1.0) -> ev.Health:
    """The recorded measurement with gradients `scale` times larger towards the output (the first layer as is)."""
    t = _template(ev.Health)
    n = len(t.grad_norm) - 1
    return dataclasses.replace(t, step=step, grad_norm=[g * scale ** (i / n) for i, g in enumerate(t.grad_norm)])


def write_run(
    folder: Path,
    name: str,
    steps: int = 200,
    *,
    lr: float = 3e-3,
    seed: int = 1337,
    max_steps: int = 1000,
    eval_every: int = 50,
    health_every: int = 25,
    health_scale: float = 1.0,
    alerts_at: tuple[int, ...] = (),
    end: str | None = "completed",  # completed | failed | None (still running, or dead)
    **config,
) -> Path:
    """A run folder `folder/name` with a metrics.jsonl of `steps` steps (and a config.toml-less RunStarted)."""
    run = Path(folder) / name
    run.mkdir(parents=True, exist_ok=True)
    out = [line(started(name, lr, seed, max_steps, **config))]
    best = math.inf
    for s in range(1, steps + 1):
        loss = curve(s, lr, seed)
        out.append(step_line(s, max_steps, loss, lr, 1.0 / (1 + s * lr)))
        if s in alerts_at:
            out.append(line(ev.Alert(s, "loss_spike", "warn", f"loss spiked at step {s}")))
        if health_every and s % health_every == 0:
            out.append(line(health(s, health_scale)))
        if eval_every and s % eval_every == 0:
            bpc = loss / math.log(2) / 3.3
            best = min(best, bpc)
            out.append(
                line(
                    make_eval(
                        step=s,
                        val_loss=loss,
                        val_ppl=math.exp(loss),
                        val_bpc=bpc,
                        best_val_loss=loss,
                        is_best=bpc == best,
                        train_loss=loss,
                        seconds=0.01,
                    )
                )
            )
    if end == "completed":
        b = None if best == math.inf else best
        out.append(
            line(
                ev.Finished(
                    steps, "max_steps", "completed", steps * 0.05, steps * 128, None, b, None, b, 2560.0, None, None
                )
            )
        )
    elif end == "failed":
        out.append(line(ev.Failed(steps, "RuntimeError: boom")))
    (run / "metrics.jsonl").write_text("".join(out), encoding="utf-8")
    return run
