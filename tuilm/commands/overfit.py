"""`tuilm overfit RECIPE`: train on one batch and say whether its loss goes to ~0 (PASS, exit 0) or not (FAIL with
the likely causes, exit 1): Karpathy's first check, before a long run."""

from __future__ import annotations

import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from tuilm.errors import ConfigError

PLAIN_EVERY = 25  # steps between progress lines when stderr is not a terminal


def overfit_command(
    source: str,
    overrides: list[str],
    *,
    steps: int,
    target: str | None,
    out: Path | None,
    as_json: bool,
) -> int:
    """Run the check; print one verdict line (or one JSON document); return the exit status."""
    from tuilm.config import apply_overrides
    from tuilm.run_setup import build_trainer, resolve_config
    from tuilm.train.overfit import default_target, overfit_batch
    from tuilm.train.reports import checkpoint_meta

    if steps < 1:
        raise ConfigError(f"--steps {steps}: give at least 1")
    if target is not None:
        target = overfit_target(target)
    config = apply_overrides(resolve_config(source), overrides)
    if out is not None:
        refuse_a_run(Path(out))
    with ExitStack() as stack:
        if out is None:  # the trainer wants a run directory; nothing in it is kept
            out = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tuilm-overfit-"))) / "run"
            keep = False
        else:
            keep = True
        trainer = build_trainer(config, out)
        stack.callback(trainer.run_lock.release)
        goal = default_target(trainer.config.model.vocab_size) if target is None else target
        print(
            f"overfit one batch: {config.recipe}, {trainer.rows_per_step} rows x {config.model.seq_len} tokens, "
            f"lr {config.train.lr:.2g}, up to {steps} steps, until the loss is under {goal:.3g} nats/token",
            file=sys.stderr,
        )
        with StepProgress(steps) as on_step:
            result = overfit_batch(trainer, steps=steps, target=goal, on_step=on_step)
        if keep:
            trainer.files.save_model(trainer.files.last, trainer.model, checkpoint_meta(trainer))
    if as_json:
        from tuilm.commands.jsonout import print_json

        saved = str(out / "last.safetensors") if keep else None
        print_json("overfit", {"recipe": config.recipe, **result_fields(result), "checkpoint": saved})
    else:
        print(verdict(result))
        if keep:
            print(f"saved {out / 'last.safetensors'}", file=sys.stderr)
    return 0 if result.passed else 1


def refuse_a_run(out: Path) -> None:
    """--out names a new folder: overfit's model (last.safetensors, no training state) written into a run that
    `tuilm train` made would replace that run's checkpoint and config and leave it impossible to resume."""
    from tuilm.run_setup import RUN_FILES

    held = [name for name in RUN_FILES if (out / name).exists()]
    if held:
        raise ConfigError(f"{out} already holds a run ({held[0]}); overfit writes a model of its own: give a new --out")


def result_fields(result) -> dict:
    from dataclasses import asdict

    return {"status": "pass" if result.passed else "fail", **asdict(result)}


def verdict(r) -> str:
    """The one line a user reads: PASS with the loss and steps, or FAIL with the likely causes."""
    batch = f"one batch ({r.rows} rows, {r.tokens:,} target tokens)"
    if r.passed:
        return f"PASS: {batch}: loss {r.initial_loss:.3g} -> {r.final_loss:.3g} (< {r.target:.3g}) in {r.steps} steps"
    loss = f"loss {r.initial_loss:.3g} -> {r.final_loss:.3g} (best {r.best_loss:.3g}, target < {r.target:.3g})"
    return f"FAIL: {batch}: {loss} after {len(r.losses)} steps; likely: {'; '.join(r.causes)}"


class StepProgress:
    """A progress bar on stderr when it is a terminal, a line every PLAIN_EVERY steps otherwise."""

    def __init__(self, steps: int):
        self.steps = steps
        self._bar = None

    def __enter__(self):
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._bar = Progress(
                TextColumn("[bold]step"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                console=Console(file=sys.stderr),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task("overfit", total=self.steps, loss="-")
        return self.on_step

    def on_step(self, step: int, loss: float) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=step, loss=f"{loss:.4f}")
        elif step == 1 or step % PLAIN_EVERY == 0:
            print(f"step {step}/{self.steps}  loss {loss:.4f}", file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()


def overfit_target(text: str) -> float:
    """--target as train's --target reads it (tuilm.values.parse_target: a value to get under), in the one unit a
    single batch has: its loss. A bare number is that loss here (train's bare number is val bits/char)."""
    from tuilm.values import parse_target

    unit, value = parse_target(text if "=" in text else f"loss={text}")
    if unit != "loss":
        raise ConfigError(f"--target {text}: overfit measures the batch's loss; give --target 0.05 or loss=0.05")
    return value
