"""`tuilm lr-find RECIPE`: the learning-rate range test, as a terminal plot, a PNG and a suggested lr."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

from tuilm.errors import ConfigError, TuilmError

MIN_STEPS, MAX_STEPS = 20, 10_000


def lrfind_command(
    source: str,
    overrides: list[str],
    *,
    start: float,
    end: float,
    steps: int,
    png: Path | None,
    rule: str,
) -> float:
    """Print the plot and the suggestion; write the PNG when matplotlib is there. Returns the suggested lr."""
    from rich.console import Console

    from tuilm.config import apply_overrides
    from tuilm.run_setup import build_trainer, resolve_config
    from tuilm.train.lrfind import DIVERGE, RULES, lr_range_test

    if not (math.isfinite(end) and 0 < start < end):
        raise ConfigError(f"--start {start:g} and --end {end:g}: need 0 < start < end, both finite")
    if png is not None and (png.suffix.lower() != ".png" or png.is_dir()):
        raise ConfigError(
            f"--png {png}: name a file, not a directory, ending in .png (the plot is written exactly there)"
        )
    if not MIN_STEPS <= steps <= MAX_STEPS:
        raise ConfigError(
            f"--steps {steps}: the range test needs {MIN_STEPS} to {MAX_STEPS:,} steps (a few hundred resolve the "
            "curve; more only retrain the model, one step at a time)"
        )
    if rule not in RULES:
        raise ConfigError(f"--rule {rule}: choose {' or '.join(RULES)}")
    config = apply_overrides(resolve_config(source), overrides)
    console = Console(highlight=False, soft_wrap=True)
    with tempfile.TemporaryDirectory(prefix="tuilm-lrfind-") as scratch:  # the trainer wants a run directory
        trainer = build_trainer(config, Path(scratch) / "run")
        console.print(
            f"lr range test: {config.recipe}, {config.train.optimizer}, lr {start:.0e} → {end:.0e} over {steps} steps"
        )
        result = lr_range_test(trainer, start=start, end=end, steps=steps)
    from rich.text import Text

    console.print(Text.from_ansi(terminal_plot(result, width=min(100, console.width - 1))))
    suggested = result.suggestion(rule)
    why = {"diverged": f"the smoothed loss passed {DIVERGE:g}x its minimum", "nonfinite": "the loss went non-finite"}
    console.print(f"stopped after {len(result.lrs)} steps: {why.get(result.stopped, f'reached lr {end:.0e}')}")
    console.print(f"smoothed loss lowest at lr {result.lr_at_min:.2e}; steepest descent at lr {result.steepest_lr:.2e}")
    rule_text = "one tenth of the lr at the minimum" if rule == "min/10" else "the steepest descent of the loss"
    console.print(f"[bold]suggested lr {suggested:.2e}[/] ({rule_text}); train with --set lr={suggested:.2g}")
    if png is not None:
        write_png(result, png, suggested, console)
    return suggested


def terminal_plot(result, width: int = 80, height: int = 18) -> str:
    import plotext as plt

    finite = [(lr, s) for lr, s in zip(result.lrs, result.smoothed, strict=True) if math.isfinite(s)]
    plt.clear_figure()
    plt.plotsize(width, height)
    plt.theme("clear")
    plt.xscale("log")
    ys = [s for _, s in finite]
    plt.plot([lr for lr, _ in finite], ys, marker="braille", label="smoothed loss")
    plt.ylim(min(ys), min(max(ys), ys[0] * 1.2))  # the divergence's tail would flatten the part that matters
    plt.vline(result.lr_at_min)
    plt.xlabel("learning rate (log)")
    plt.title("loss against learning rate; | marks the minimum")
    return plt.build()


def write_png(result, path: Path, suggested: float, console) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure
    except ImportError:
        console.print(f"[yellow]no PNG written[/]: matplotlib is missing (pip install 'tuilm[plot]') for {path}")
        return
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    ax.plot(result.lrs, result.losses, alpha=0.3, label="loss")
    ax.plot(result.lrs, result.smoothed, label="smoothed (debiased EMA)")
    ax.axvline(suggested, color="tab:green", linestyle="--", label=f"suggested {suggested:.1e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    finite = [s for s in result.smoothed if math.isfinite(s)]
    if finite:
        ax.set_ylim(min(finite) * 0.95, max(finite[0], min(finite) * 4) * 1.05)
    ax.legend()
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    except OSError as e:
        raise TuilmError(f"{path}: cannot write the plot ({e.strerror or e})") from None
    console.print(f"plot written to {path}")
