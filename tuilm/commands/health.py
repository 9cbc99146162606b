"""`tuilm health RUN`: a run's gradient health report, from its metrics.jsonl."""

from __future__ import annotations

from pathlib import Path

from tuilm.errors import TuilmError
from tuilm.formatting import shown


def health_command(run: Path, as_json: bool = False) -> None:
    from rich.console import Console

    from tuilm.train.health_report import render, summarize
    from tuilm.train.metrics_file import liveness, read_events

    run = Path(run)
    path = run / "metrics.jsonl" if run.is_dir() else run
    if path.is_file() and not path.name.endswith(".jsonl"):
        raise TuilmError(f"{run}: not a metrics.jsonl; point at a run directory written by `tuilm train`")
    if not path.is_file():
        raise TuilmError(f"{run}: no metrics.jsonl here; point at a run directory written by `tuilm train`")
    summary = summarize(read_events(path))
    summary["live"] = liveness(path.parent)
    if as_json:
        from tuilm.commands.jsonout import print_json

        print_json("health", as_document(run, summary))
        return
    render(run, summary, Console())


def as_document(run: Path, summary: dict) -> dict:
    """The health report as data (docs/scripting.md)."""
    import statistics

    from tuilm.train.health_report import run_state

    started, health, steps = summary["started"], summary["health"], summary["steps"]
    grads = [s.grad_norm for s in steps]
    layers, blocks = [], []
    if health:
        last = health[-1]
        for i, layer in enumerate(last.layers):
            history = [h.grad_norm[i] for h in health if i < len(h.grad_norm)]
            layers.append(
                {
                    "layer": layer,
                    "median_grad_norm": statistics.median(history),
                    "grad_norm": last.grad_norm[i],
                    "update_ratio_log10": last.update_ratio[i],
                    "weight_norm": last.weight_norm[i],
                }
            )
        for i, block in enumerate(last.blocks):
            dead, entropy = last.block_stats(i)
            blocks.append(
                {
                    "block": block,
                    "act_std": last.act_std[i],
                    "act_max": last.act_max[i],
                    "mlp_std": last.mlp_std[i],
                    "dead_fraction": dead,
                    "attn_entropy": entropy,
                }
            )
    from tuilm.commands.jsonout import plain

    alerts = [plain(a) for a in summary["alerts"]]
    return {
        "run": str(run),
        "name": started.name if started else shown(Path(run).name),
        "status": run_state(summary),
        "step": steps[-1].step if steps else 0,
        "grad_norm": {
            "median": statistics.median(grads) if grads else None,
            "last": grads[-1] if grads else None,
            "clipped_steps": sum(s.clipped for s in steps),
            "steps": len(steps),
        },
        "layers": layers,
        "layers_step": health[-1].step if health else None,
        "blocks": blocks,
        "alerts": alerts,
    }
