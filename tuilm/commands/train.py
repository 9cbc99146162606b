"""`tuilm train` and `tuilm recipes`: from options to a running trainer with a front end, and its exit status."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tuilm.config import Override, RunConfig, apply_overrides, load_toml
from tuilm.errors import ConfigError
from tuilm.resources import recipe_names, recipe_path
from tuilm.run_setup import (
    STOP_SIGNALS,
    Interrupt,
    attach_files,
    build_trainer,
    check_resume_changes,
    refuse_if_live,
    release_run_dir,
    report_outcome,
    resolve_config,
    train_until_done,
)
from tuilm.train.comparison import compare_metrics


@dataclass
class TrainOptions:
    source: str | None = None
    overrides: list[str] = field(default_factory=list)
    headless: bool = False
    resume: Path | None = None
    out: Path | None = None
    name: str | None = None
    device: str | None = None
    time: str | None = None
    steps: int | None = None
    target: str | None = None  # --target: train.target (2.2 is val bits/char; loss=1.5)
    compile: bool | None = None  # --compile / --no-compile; None leaves train.compile (auto: on for CUDA)
    wandb: bool = False
    wandb_project: str = "tuilm"
    wandb_name: str | None = None
    tensorboard: bool = False  # TensorBoard event files under <run>/tensorboard
    compare: Path | None = None  # another run whose loss and val curves the dashboard overlays
    init: str | None = None  # --init gpt2 | gpt2-medium | ... | a Hugging Face model directory
    nproc: int = 1  # > 1: launch this many ranks on this machine through torch.distributed.run


def launcher_args(options: TrainOptions) -> list[str]:
    """The `tuilm train` arguments each rank of an --nproc launch runs with (the same options, minus --nproc)."""
    args = [options.source] if options.source else []
    for override in options.overrides:
        args += ["--set", override]
    flags = {
        "--headless": options.headless,  # else rank 0 takes the dashboard when the launcher has a terminal
        "--compile": options.compile is True,
        "--no-compile": options.compile is False,
        "--wandb": options.wandb,
        "--tensorboard": options.tensorboard,
    }
    args += [flag for flag, on in flags.items() if on]
    values = {
        "--resume": options.resume,
        "--out": options.out,
        "--name": options.name,
        "--device": options.device,
        "--time": options.time,
        "--steps": options.steps,
        "--target": options.target,
        "--init": options.init,
        "--wandb-name": options.wandb_name,
        "--compare": options.compare,
    }
    for flag, value in values.items():
        if value is not None:
            args += [flag, str(value)]
    if options.wandb_project != "tuilm":
        args += ["--wandb-project", options.wandb_project]
    return args


def launch(options: TrainOptions) -> int:
    """`tuilm train --nproc N`: torch's elastic launcher on this machine; its exit status is the job's."""
    from tuilm.train import distributed

    if options.nproc < 1:
        raise ConfigError(f"--nproc {options.nproc}: give at least 1 process")
    return distributed.launch(options.nproc, launcher_args(options))


def cli_overrides(options: TrainOptions) -> list[Override]:
    """--set overrides as typed, then the options that are settings too, as typed pairs (never re-parsed)."""
    extra: list[Override] = []
    if options.device is not None:
        extra.append(("train.device", options.device))
    if options.time:
        extra.append(("train.time", options.time))
    if options.steps is not None:
        extra.append(("train.max_steps", options.steps))
    if options.target:
        extra.append(("train.target", options.target))
    if options.compile is not None:
        extra.append(("train.compile", options.compile))
    if options.init:
        extra.append(("train.init", options.init))
    return [*options.overrides, *extra]


def run_dir_for(config: RunConfig, options: TrainOptions) -> Path:
    if options.out:
        return Path(options.out)
    if options.name:
        return Path("runs") / options.name
    source = config.data.source.removeprefix("hf:").split("@")[0].replace(":", "-")  # hf:name:config@split
    stem = config.recipe if config.recipe != "custom" else Path(source).stem or "run"
    return Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def train_command(options: TrainOptions) -> int:
    check_sinks(options)  # a missing package or a bad --compare path: one line, before anything starts
    from tuilm.checkpoint.metadata import read_run_config
    from tuilm.train import distributed

    if options.nproc != 1:
        return launch(options)
    if options.resume:
        run_dir = Path(options.resume)
        refuse_if_live(run_dir)
        if not (run_dir / "last.safetensors").is_file():
            raise ConfigError(f"{run_dir}: nothing to resume (no last.safetensors in it)")
        saved_config = read_run_config(run_dir / "last.safetensors")
        config = apply_overrides(saved_config, cli_overrides(options))
        check_resume_changes(saved_config, config, run_dir)  # before anything in the run dir is touched
    else:
        if not options.source:
            raise ConfigError("say what to train: a recipe (tuilm recipes), a .toml file or a data path")
        config = apply_overrides(resolve_config(options.source), cli_overrides(options))
        dist = distributed.init(config.train.device)  # under torchrun; world 1 otherwise
        run_dir = dist.broadcast(run_dir_for(config, options))  # rank 0's clock names the run
        if dist.main:
            refuse_if_live(run_dir)
        if (run_dir / "last.safetensors").exists():
            raise ConfigError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or pick --name")
    if options.compare:
        compare_metrics(options.compare, run_dir)
    dist = distributed.init(config.train.device)
    try:
        code = train_ranked(config, run_dir, options, dist)
    finally:
        distributed.shutdown()
    if dist.active:
        leave_without_teardown(code)
    return code


def leave_without_teardown(code: int) -> None:
    """End a DDP rank here, skipping the interpreter's teardown, in which 2 of 177 two-rank runs under load had
    rank 1 abort after the run had finished and saved ("terminate called without an active exception",
    SIGABRT; 0 of 314 since). Python's faulthandler showed the main thread past its last Python frame and the
    abort on a thread that is not Python's: a C++ thread still running while the interpreter finalizes. Gloo's
    worker threads are such threads, and freeing the last reference to a collective's tensor from one needs
    the GIL, which CPython ends a thread for asking during finalization. Nothing is left to do here: the
    process group is down, every file was written atomically and closed, metrics.jsonl is unbuffered, and
    wandb has finished its run."""
    import os

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def require_wandb() -> None:
    """ConfigError before training when --wandb cannot log: wandb missing, or no API key outside offline mode
    (wandb.init would fail at step 0, after the data and model were built). Reads the key locally, no network."""
    import os

    from tuilm.errors import ConfigError

    try:
        import wandb
    except ImportError:
        raise ConfigError("wandb is not installed; pip install wandb, or train without --wandb") from None
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun"):
        return
    if not wandb.login(prompt=False, verify=False):
        raise ConfigError(
            "--wandb: no W&B API key; run `wandb login` or set WANDB_API_KEY (WANDB_MODE=offline logs locally)"
        )


def check_sinks(options: TrainOptions) -> None:
    if options.wandb:
        require_wandb()
    if options.tensorboard:
        from tuilm.train.loggers import require_tensorboard

        require_tensorboard()
    if options.compare:
        compare_metrics(options.compare)


def train_ranked(config: RunConfig, run_dir: Path, options: TrainOptions, dist) -> int:
    """Train as this process's rank: rank 0 (or the one process) has the front end and the run's files; under
    DDP the other ranks train silently and print only errors."""
    # The dashboard takes the terminal: rank 0's alone under DDP (every rank inherits the launcher's terminal).
    dashboard = not options.headless and dist.main and sys.stdout.isatty() and sys.stdin.isatty()
    trainer = build_trainer(config, run_dir, resume=bool(options.resume), own_thread=True)
    if not dist.main:
        return run_headless(trainer, progress=lambda event: None)
    metrics = attach_files(trainer)
    if options.wandb:
        from tuilm.train.loggers import WandbLogger

        trainer.bus.subscribe(WandbLogger(options.wandb_project, options.wandb_name, run_dir, console=not dashboard))
    tensorboard = None
    if options.tensorboard:
        from tuilm.train.loggers import TensorBoardLogger

        tensorboard = TensorBoardLogger(run_dir)
        trainer.bus.subscribe(tensorboard)
    compare = compare_metrics(options.compare, run_dir) if options.compare else None
    try:
        if dashboard:
            return run_dashboard(trainer, compare)
        return run_headless(trainer, compare=compare)
    finally:
        metrics.close()
        if tensorboard is not None:  # a second Ctrl-C leaves before the Finished event: close it here too
            tensorboard.close()
        release_run_dir(trainer)


def run_headless(trainer, progress=None, compare: Path | None = None) -> int:
    """Train in a background thread with a progress bar (or log lines); Ctrl-C as `Interrupt` says. `compare`:
    the metrics.jsonl of another run, whose val loss each eval line adds."""
    from tuilm.train.comparison import OtherRun
    from tuilm.train.progress import HeadlessProgress

    trainer.bus.subscribe(progress or HeadlessProgress(compare=OtherRun(compare) if compare else None))
    interrupt = Interrupt(
        lambda: print("\nstopping after this step and saving (Ctrl-C again to quit at once)", file=sys.stderr),
        lambda: print("\nstopping now without saving", file=sys.stderr),
    )
    try:
        with interrupt.installed():
            train_until_done(trainer, interrupt)
    except KeyboardInterrupt:
        return 130
    return report_outcome(trainer)


def run_dashboard(trainer, compare: Path | None = None) -> int:
    """Train with the dashboard; the exit status is report_outcome's (0, or 1 when training failed)."""
    from tuilm.commands.chat import open_chat
    from tuilm.tui.app import Dashboard, OpenChat
    from tuilm.tui.startup import freeze_startup_objects

    # Torch keeps its default thread count (every core). On 2 cores benchmarks/dashboard_overhead.py measured one
    # thread, which would leave a core to the UI, at 69% of two threads' tokens/s, while the paced UI costs two
    # threads nothing the VM's noise resolves, and keys are still handled within a millisecond.
    app = Dashboard(trainer, compare=compare)
    freeze_startup_objects()
    try:
        with _signals_quit(app):
            choice = app.run()
    finally:
        if trainer.thread is not None and trainer.thread.is_alive() and app.return_code != 130:
            trainer.stop("stopped")
            trainer.join()
    if app.return_code == 130:
        return 130
    code = report_outcome(trainer)
    if app.return_code and not code:
        code = app.return_code  # the UI itself failed (Textual has printed why)
    if isinstance(choice, OpenChat) and code == 0:
        return open_chat(choice.path)
    if trainer.result is not None:
        # The dashboard is gone with the alternate screen: leave the outcome, and where to go next, behind.
        from tuilm.train.summaries import finished_line

        print(finished_line(trainer.result))
        if trainer.result.last_checkpoint:
            print(f"run directory: {trainer.run_dir}  (chat: tuilm chat --model-path {trainer.run_dir})")
    return code


@contextmanager
def _signals_quit(app):
    """SIGTERM and SIGHUP do what Ctrl-C does in the dashboard: stop, save and quit (a second one: at once)."""
    import asyncio
    import signal
    import threading

    def handler(signum, frame) -> None:
        trainer = getattr(app.source, "trainer", None)
        if trainer is not None and not watchdog:
            watchdog.append(threading.Thread(target=_leave_once_saved, args=(trainer,), daemon=True))
            watchdog[0].start()
        try:
            # Through the app's own message queue: run bare on the loop, the action's timer (which waits for the
            # save, then quits) would have no message pump to run in, and the dashboard would wait for a key.
            asyncio.get_running_loop().call_soon_threadsafe(app.call_later, app.action_stop_now)
        except RuntimeError:  # the app's loop is not running (yet, or any more): stop the trainer itself
            trainer = getattr(app.source, "trainer", None)
            if trainer is not None:
                trainer.stop("interrupted")

    watchdog: list = []
    sigs = [s for s in STOP_SIGNALS if s != signal.SIGINT]  # Ctrl-C reaches Textual as a key
    previous = {s: signal.signal(s, handler) for s in sigs}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# Seconds the dashboard has to close once a signal's save is done: ample for a terminal, while one that is gone
# (SIGHUP on a closed window) blocks Textual's shutdown for ever, its writes to the terminal queued behind a dead one.
CLOSE_GRACE_S = 10.0


def _leave_once_saved(trainer) -> None:
    """After SIGTERM/SIGHUP: wait for the trainer's save, give the dashboard CLOSE_GRACE_S to close, then leave as
    the headless path does (0 stopped and saved, 1 failed or diverged). Every file is written atomically and
    metrics.jsonl unbuffered: nothing but the terminal is left to flush, and it is gone."""
    import os

    trainer.join()
    time.sleep(CLOSE_GRACE_S)
    failed = trainer.error is not None or (trainer.result is not None and trainer.result.status == "diverged")
    release_run_dir(trainer)
    os._exit(1 if failed else 0)


def list_recipes(as_json: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    if as_json:
        import dataclasses

        from tuilm.commands.jsonout import print_json

        recipes = []
        for name in recipe_names():
            config = load_toml(recipe_path(name), name)
            settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("recipe", "description")}
            recipes.append(
                {"name": name, "description": config.description, "path": str(recipe_path(name)), "settings": settings}
            )
        print_json("recipes", {"recipes": recipes})
        return

    table = Table(title="recipes: tuilm train NAME", title_justify="left", show_lines=True)
    table.add_column("name", style="bold", no_wrap=True)
    table.add_column("what it trains")
    for name in recipe_names():
        config = load_toml(recipe_path(name), name)
        m, t = config.model, config.train
        stops = [f"{t.max_steps:,} steps" if t.max_steps else "", t.time, f"{t.epochs:g} epochs" if t.epochs else ""]
        shape = (
            f"{config.data.source}, BPE {config.data.vocab_size:,}, {m.n_layers} layers x {m.d_model}, "
            f"{m.n_heads} heads, seq {m.seq_len}; stops at {', '.join(x for x in stops if x) or 'Ctrl-C'}"
        )
        table.add_row(name, Text.assemble(config.description, "\n", (shape, "dim")))
    Console().print(table)
