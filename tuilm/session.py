"""Run setup shared by `tuilm train` and `tuilm sweep`: from a recipe to a built trainer with its files attached,
the wait for its thread under Ctrl-C, and what its end means (exit status, error.log).

It sits below both commands and above the library: nothing in train/, tui/ or sweep/ needs the terminal to run.
"""

from __future__ import annotations

import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tuilm.config import RunConfig, from_dict, load_toml
from tuilm.errors import ConfigError, TuilmError, print_error
from tuilm.resources import recipe_names, recipe_path


def resolve_config(source: str) -> RunConfig:
    """A recipe name, a recipe .toml, or a dataset name / data path trained with the default settings."""
    path = recipe_path(source)
    if path is not None:
        return load_toml(path, source)
    if source.endswith(".toml"):
        if not Path(source).is_file():
            raise ConfigError(f"{source}: no such recipe file")
        return load_toml(Path(source))
    from tuilm.data.corpora import CORPORA
    from tuilm.data.hf import is_hf
    from tuilm.data.sources import NAMED_SOURCES

    if source in NAMED_SOURCES or source in CORPORA or is_hf(source) or Path(source).expanduser().exists():
        return from_dict({"data": {"source": source}}, recipe="custom")
    import difflib

    names = recipe_names() + list(NAMED_SOURCES) + list(CORPORA)
    close = difflib.get_close_matches(source, names, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise ConfigError(
        f"'{source}' is not a recipe, a .toml file, a dataset name or an existing path; {hint}"
        f"recipes: {', '.join(recipe_names())}"
    )


def build_trainer(config: RunConfig, run_dir: Path, *, resume: bool = False, quiet: bool = False, bus=None):
    """Prepare the data (downloading and training the tokenizer if needed) and construct the trainer."""
    from tuilm.atomic import atomic_write_text
    from tuilm.data.dataset import prepare
    from tuilm.train import distributed
    from tuilm.train.trainer import Trainer

    dist = distributed.current()  # under DDP: rank 0 prepares first (caches) and alone writes the run directory

    def status(message: str) -> None:
        if dist.main:
            print(message + "…", file=sys.stderr)

    config, tokenizer, init_folder = pretrained_start(config, run_dir, resume)
    with dist.main_first():
        dataset = prepare(
            config.data, config.model.seq_len, config.rows_per_step, on_status=status, tokenizer=tokenizer
        )
    if dist.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(config, dataset, run_dir, bus, resume=resume)
    if init_folder is not None:
        from tuilm.model import pretrained

        pretrained.check_vocab(dataset.tokenizer, trainer.config.model, init_folder)
        pretrained.load_weights(trainer.model, init_folder)
    # Written once the trainer exists (a resume that fails leaves the old file), and again on every resume:
    # its overrides (--steps, --set) are part of what the run now is.
    if dist.main:
        atomic_write_text(run_dir / "config.toml", config.to_toml())
    return trainer


def pretrained_start(config: RunConfig, run_dir: Path, resume: bool):
    """(config, tokenizer, weights folder) for a run from pre-trained GPT-2 (train.init) or with a given tokenizer
    (data.tokenizer); (config, None, None) otherwise, and the tokenizer is tuilm's own BPE."""
    if not (config.train.init or config.data.tokenizer):
        return config, None, None
    from tuilm.model import pretrained

    if resume:  # the checkpoint has the architecture, the weights and the tokenizer already
        from tuilm.checkpoint import read_metadata
        from tuilm.data.tokenizer import Tokenizer

        return config, Tokenizer.from_json(read_metadata(run_dir / "last.safetensors")["tokenizer"]), None
    folder = None
    if config.train.init:
        config, folder = pretrained.init_config(config, config.train.init)
    return config, pretrained.load_tokenizer(pretrained.resolve(config.data.tokenizer or config.train.init)), folder


def attach_files(trainer):
    """metrics.jsonl for the run; the caller closes it when the run is over."""
    from tuilm.train.sinks import MetricsFile

    metrics = MetricsFile(trainer.run_dir / "metrics.jsonl")
    trainer.bus.subscribe(metrics)
    return metrics


class Interrupt:
    """Ctrl-C while training: the first one stops the current trainer after its step (it saves) and says what
    happens next; a second one leaves at once (checkpoints already written stay intact: every write is atomic)."""

    def __init__(self, on_first: Callable[[], None], on_second: Callable[[], None] | None = None):
        self.on_first, self.on_second = on_first, on_second
        self.requested = False
        self.trainer = None

    def __call__(self, signum, frame) -> None:
        if self.requested:
            if self.on_second is not None:
                self.on_second()
            raise KeyboardInterrupt
        self.requested = True
        self.on_first()
        if self.trainer is not None:
            self.trainer.stop("interrupted")

    @contextmanager
    def installed(self) -> Iterator[Interrupt]:
        # Signal handlers belong to the main thread; elsewhere (a test's worker thread) Ctrl-C is not ours.
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.signal(signal.SIGINT, self)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


def train_until_done(trainer, interrupt: Interrupt | None = None) -> None:
    """Start the trainer's thread and wait for it, in short joins so that Ctrl-C reaches the handler."""
    if interrupt is not None:
        interrupt.trainer = trainer
    try:
        trainer.start()
        while trainer.thread.is_alive():
            trainer.join(0.2)
    finally:
        if interrupt is not None:
            interrupt.trainer = None


def write_error_log(run_dir: Path, error: BaseException) -> str:
    """The traceback in run_dir/error.log; returns the note that says where it is ("" when it could not)."""
    from tuilm.atomic import atomic_write_text

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "error.log", "".join(traceback.format_exception(error)))
    except OSError:
        return ""
    return f" (traceback in {run_dir / 'error.log'})"


def report_outcome(trainer) -> int:
    """Exit status for a finished trainer: 0 done, 2 for a problem with the input, 1 for anything else."""
    if trainer.error is None:
        if trainer.result is not None and trainer.result.status == "diverged":
            return 1
        return 0
    error = trainer.error
    if isinstance(error, TuilmError):
        raise error
    dist = trainer.dist
    where = write_error_log(trainer.run_dir, error) if dist.main else ""  # rank 0 alone writes the run directory
    rank = f"rank {dist.rank}: " if dist.active else ""
    print_error(f"{rank}training failed at step {trainer.step}: {type(error).__name__}: {error}{where}")
    return 1
