"""`tuilm train`: from a recipe (or data path) and overrides to a running trainer with a front end."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tuilm.config import RunConfig, apply_overrides, from_dict, load_toml
from tuilm.errors import ConfigError, TuilmError
from tuilm.resources import recipe_names, recipe_path


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
    compile: bool = False
    wandb: bool = False
    wandb_project: str = "tuilm"
    wandb_name: str | None = None
    init: str | None = None  # corpora (issue 15): --init gpt2 | gpt2-medium | ... | a HF model directory


def resolve_config(source: str) -> RunConfig:
    """A recipe name, a recipe .toml, or a dataset name / data path trained with the default settings."""
    path = recipe_path(source)
    if path is not None:
        return load_toml(path, source)
    if source.endswith(".toml"):
        if not Path(source).is_file():
            raise ConfigError(f"{source}: no such recipe file")
        return load_toml(Path(source))
    from tuilm.data.corpora import CORPORA  # corpora (issue 15): the named corpora of tuilm.data.corpora
    from tuilm.data.sources import NAMED_SOURCES

    is_hf = source.startswith("hf:")  # corpora (issue 15): a Hugging Face dataset
    if source in NAMED_SOURCES or source in CORPORA or is_hf or Path(source).expanduser().exists():
        config = from_dict({"data": {"source": source}}, recipe="custom")
        return config
    import difflib

    names = recipe_names() + list(NAMED_SOURCES) + list(CORPORA)
    close = difflib.get_close_matches(source, names, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise ConfigError(
        f"'{source}' is not a recipe, a .toml file, a dataset name or an existing path; {hint}"
        f"recipes: {', '.join(recipe_names())}"
    )


def cli_overrides(options: TrainOptions) -> list[str]:
    extra = []
    if options.device:
        extra.append(f"train.device={json.dumps(options.device)}")
    if options.time:
        extra.append(f"train.time={json.dumps(options.time)}")
    if options.steps is not None:
        extra.append(f"train.max_steps={options.steps}")
    if options.compile:
        extra.append("train.compile=true")
    if options.init:  # corpora (issue 15)
        extra.append(f"train.init={json.dumps(options.init)}")
    return options.overrides + extra


def run_dir_for(config: RunConfig, options: TrainOptions) -> Path:
    if options.out:
        return Path(options.out)
    if options.name:
        return Path("runs") / options.name
    source = config.data.source.removeprefix("hf:").split("@")[0].replace(":", "-")  # corpora: hf:name:config
    stem = config.recipe if config.recipe != "custom" else Path(source).stem or "run"
    return Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def train_command(options: TrainOptions) -> int:
    from tuilm.checkpoint import read_metadata

    if options.resume:
        run_dir = Path(options.resume)
        if not (run_dir / "last.safetensors").is_file():
            raise ConfigError(f"{run_dir}: nothing to resume (no last.safetensors in it)")
        meta = read_metadata(run_dir / "last.safetensors")
        saved = json.loads(meta["train_config"])
        config = from_dict(saved, saved.get("recipe", "custom"))
        config = apply_overrides(config, cli_overrides(options))
    else:
        if not options.source:
            raise ConfigError("say what to train: a recipe (tuilm recipes), a .toml file or a data path")
        config = apply_overrides(resolve_config(options.source), cli_overrides(options))
        run_dir = run_dir_for(config, options)
        if (run_dir / "last.safetensors").exists():
            raise ConfigError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or pick --name")
    dashboard = not options.headless and sys.stdout.isatty() and sys.stdin.isatty()
    trainer = build_trainer(config, run_dir, resume=bool(options.resume), quiet=dashboard)
    metrics = attach_files(trainer)
    if options.wandb:
        from tuilm.train.sinks import WandbLogger

        trainer.bus.subscribe(WandbLogger(options.wandb_project, options.wandb_name, run_dir, console=not dashboard))
    try:
        if dashboard:
            from tuilm.tui.app import run_dashboard

            return run_dashboard(trainer)
        return run_headless(trainer)
    finally:
        metrics.close()


def build_trainer(config: RunConfig, run_dir: Path, *, resume: bool = False, quiet: bool = False, bus=None):
    """Prepare the data (downloading and training the tokenizer if needed) and construct the trainer."""
    from tuilm.data.dataset import prepare
    from tuilm.train.trainer import Trainer

    def status(message: str) -> None:
        print(message + "…", file=sys.stderr)

    # -- corpora (issue 15): pre-trained GPT-2 (train.init) and its tokenizer (data.tokenizer, or init's)
    tokenizer, init_folder = None, None
    if config.train.init or config.data.tokenizer:
        from tuilm.model import pretrained

        if resume:  # the checkpoint has the architecture, the weights and the tokenizer already
            from tuilm.checkpoint import read_metadata
            from tuilm.data.tokenizer import Tokenizer

            tokenizer = Tokenizer.from_json(read_metadata(run_dir / "last.safetensors")["tokenizer"])
        else:
            if config.train.init:
                config, init_folder = pretrained.init_config(config, config.train.init)
            tokenizer = pretrained.load_tokenizer(pretrained.resolve(config.data.tokenizer or config.train.init))
    # -- end corpora
    dataset = prepare(config.data, config.model.seq_len, config.rows_per_step, on_status=status, tokenizer=tokenizer)
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(config, dataset, run_dir, bus, resume=resume)
    if init_folder is not None:  # corpora (issue 15)
        pretrained.check_vocab(dataset.tokenizer, trainer.config.model, init_folder)
        pretrained.load_weights(trainer.model, init_folder)
    from tuilm.atomic import atomic_write_text

    # Written once the trainer exists (a resume that fails leaves the old file), and again on every resume:
    # its overrides (--steps, --set) are part of what the run now is.
    atomic_write_text(run_dir / "config.toml", config.to_toml())
    return trainer


def attach_files(trainer):
    from tuilm.train.sinks import MetricsFile

    metrics = MetricsFile(trainer.run_dir / "metrics.jsonl")
    trainer.bus.subscribe(metrics)
    return metrics


def run_headless(trainer, progress=None) -> int:
    """Train in a background thread; the first Ctrl-C stops after the current step and saves, a second one
    leaves at once (the checkpoints already written stay intact: every write is atomic)."""
    from tuilm.train.sinks import HeadlessProgress

    trainer.bus.subscribe(progress or HeadlessProgress())
    interrupted = threading.Event()

    def on_sigint(signum, frame):
        if interrupted.is_set():
            print("\nstopping now without saving", file=sys.stderr)
            raise KeyboardInterrupt
        interrupted.set()
        print("\nstopping after this step and saving (Ctrl-C again to quit at once)", file=sys.stderr)
        trainer.stop("interrupted")

    previous = (
        signal.signal(signal.SIGINT, on_sigint) if threading.current_thread() is threading.main_thread() else None
    )
    try:
        trainer.start()
        while trainer.thread.is_alive():
            trainer.join(0.2)
    except KeyboardInterrupt:
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return report_outcome(trainer)


def report_outcome(trainer) -> int:
    """Exit status for a finished trainer: 0 done, 2 for a problem with the input, 1 for anything else."""
    if trainer.error is None:
        if trainer.result is not None and trainer.result.status == "diverged":
            return 1
        return 0
    error = trainer.error
    if isinstance(error, TuilmError):
        raise error
    log = trainer.run_dir / "error.log"
    try:
        import traceback

        log.write_text("".join(traceback.format_exception(error)), encoding="utf-8")
        where = f" (traceback in {log})"
    except OSError:
        where = ""
    from tuilm.cli import print_error

    print_error(f"training failed at step {trainer.step}: {type(error).__name__}: {error}{where}")
    return 1


def list_recipes() -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

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
