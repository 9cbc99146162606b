"""Regenerates recorded_run.jsonl, the events the dashboard snapshot tests replay: a real tiny training run.

The run is made in a temporary directory with relative paths, so nothing machine-specific is recorded but the
timings (which the snapshots show as recorded). Usage: python tests/data/record_events.py
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from tests.conftest import SMALL_TEXT  # noqa: E402
from tests.helpers import tiny_trainer  # noqa: E402
from tuilm.train.metrics_file import MetricsFile  # noqa: E402

OVERRIDES = ["max_steps=150", "eval_interval=25", "health.interval=5", "lr=3e-3", "act=relu"]
FAULT_AT = 110  # a planted fault, so that the recording holds real alerts: noise added to the MLP output weights


def plant_fault(trainer):
    import torch

    from tuilm.train import events as ev

    def on_event(event):
        if isinstance(event, ev.Step) and event.step == FAULT_AT:
            generator = torch.Generator().manual_seed(0)
            with torch.no_grad():
                for block in trainer.model.blocks:
                    w = block.mlp.proj.weight
                    w.add_(torch.randn(w.shape, generator=generator) * 5)

    return on_event


def main() -> None:
    out = HERE / "recorded_run.jsonl"
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        os.environ["XDG_CACHE_HOME"] = tmp
        Path("small.txt").write_text(SMALL_TEXT, encoding="utf-8")
        trainer, _ = tiny_trainer("small.txt", Path("runs/tiny-demo"), *OVERRIDES)
        metrics = MetricsFile(out.with_suffix(".tmp"))
        trainer.bus.subscribe(metrics)
        trainer.bus.subscribe(plant_fault(trainer))
        trainer.run()
        metrics.close()
        out.with_suffix(".tmp").replace(out)
    print(f"wrote {out} ({out.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
