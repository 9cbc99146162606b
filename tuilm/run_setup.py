"""Run setup shared by `tuilm train` and `tuilm sweep`: from a recipe to a built trainer with its files attached,
the wait for its thread under Ctrl-C, and what its end means (exit status, error.log).

It sits below both commands and above the library: nothing in train/, tui/ or sweep/ needs the terminal to run.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

from tuilm.config import HealthConfig, RunConfig, all_keys, from_dict, load_toml
from tuilm.errors import ConfigError, TuilmError, print_error
from tuilm.formatting import short
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


def build_trainer(config: RunConfig, run_dir: Path, *, resume: bool = False, bus=None, own_thread: bool = False):
    """Prepare the data (downloading and training the tokenizer if needed) and construct the trainer.

    `own_thread`: build it on a new thread that then trains it too (`trainer.start()`), so that every torch op of
    the run happens on one thread (why: `tuilm.train.controls.RunThread`). Front ends that train on a thread of
    their own while the main thread waits or draws want it; a caller that trains on its own thread does not."""
    if not own_thread:
        return _build_trainer(config, run_dir, resume, bus)
    from tuilm.train.controls import RunThread

    thread = RunThread()
    try:
        trainer = thread.call(_build_trainer, config, run_dir, resume, bus)
    except BaseException:
        thread.close()
        raise
    trainer.run_thread = thread
    return trainer


def _build_trainer(config: RunConfig, run_dir: Path, resume: bool, bus):
    from tuilm.atomic import atomic_write_text
    from tuilm.data.dataset import prepare
    from tuilm.train import distributed
    from tuilm.train.trainer import Trainer

    dist = distributed.current()  # under DDP: rank 0 prepares first (caches) and alone writes the run directory

    def status(message: str) -> None:
        if dist.main:
            print(message + "…", file=sys.stderr)

    # Rank 0 alone writes the run directory, so it alone claims it (the lock is held until the run is over).
    created = not Path(run_dir).exists()
    lock = claim_run_dir(run_dir) if dist.main else None
    try:
        config, tokenizer, init_folder = pretrained_start(config, run_dir, resume)
        with dist.main_first():
            dataset = prepare(
                config.data, config.model.seq_len, config.rows_per_step, on_status=status, tokenizer=tokenizer
            )
        if resume:
            check_same_data(run_dir, dataset)
        trainer = Trainer(config, dataset, run_dir, bus, resume=resume)
    except BaseException:
        if lock is not None:
            lock.release()
            if created:  # a start refused (a bad --init, unusable data) leaves no empty run behind
                _remove_if_empty(Path(run_dir))
        raise
    trainer.run_lock = lock
    if init_folder is not None:
        from tuilm.model import pretrained

        pretrained.check_vocab(dataset.tokenizer, trainer.config.model, init_folder)
        pretrained.load_weights(trainer.model, init_folder)
        if trainer.ema:  # train.ema averages from the pre-trained weights, not the random ones they replaced
            trainer.ema.load(dict(trainer.model.named_parameters()))
    # Written once the trainer exists (a resume that fails leaves the old file), and again on every resume:
    # its overrides (--steps, --set) are part of what the run now is.
    if dist.main:
        atomic_write_text(run_dir / "config.toml", config.to_toml())
    return trainer


def _remove_if_empty(run_dir: Path) -> None:
    from tuilm.runlock import LOCK_NAME

    with contextlib.suppress(OSError):
        (run_dir / LOCK_NAME).unlink(missing_ok=True)
        run_dir.rmdir()  # fails, as it should, when anything else is in it


def claim_run_dir(run_dir: Path):
    """The run dir made (or found) writable and locked for this process, its stale temp files removed.

    One line (ConfigError) when it is a file, cannot be created or written, or another live process trains into
    it; a killed save's `.<name>.*.tmp` files (tuilm.atomic's temp names) are deleted, under the lock.
    """
    from tuilm.atomic import check_replaceable
    from tuilm.runlock import RunLock

    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is not a directory; give --out a folder for the run")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(run_dir, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "Permission denied")
        lock = _Claim.take(run_dir, RunLock)
    except OSError as e:
        raise ConfigError(
            f"{run_dir}: cannot write the run directory ({e.strerror or e}); choose another with --out"
        ) from None
    try:
        for name in RUN_FILES:  # a directory (or FIFO) where a run file belongs: say so now, not at the first save
            check_replaceable(run_dir / name)
    except TuilmError:
        lock.release()
        raise
    for tmp in run_dir.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
    return lock


RUN_FILES = ("config.toml", "metrics.jsonl", "last.safetensors", "best.safetensors", "train_state.safetensors")


class _Claim:
    """This process's hold on a run dir's lock. Another trainer of the same process into the same dir (a test that
    stops a run and resumes it in-process) shares it: the lock keeps other processes out, and is let go when the
    last holder in this process releases it."""

    held: dict[str, tuple] = {}  # resolved dir -> (RunLock, number of holders)

    def __init__(self, key: str):
        self.key, self.released = key, False

    @classmethod
    def take(cls, run_dir: Path, lock_class) -> _Claim:
        key = str(Path(run_dir).resolve())
        lock, count = cls.held.get(key, (None, 0))
        cls.held[key] = (lock or lock_class(run_dir).acquire(), count + 1)
        return cls(key)

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        lock, count = self.held.pop(self.key)
        if count > 1:
            self.held[self.key] = (lock, count - 1)
        else:
            lock.release()


def check_same_data(run_dir: Path, dataset) -> None:
    """A resume trains on the data the checkpoint was trained on: DataError, before config.toml is rewritten, when
    the corpus changed since (its tokenizer and batch order would no longer be the checkpoint's)."""
    from tuilm.checkpoint import read_metadata
    from tuilm.errors import DataError

    raw = read_metadata(run_dir / "last.safetensors").get("data_fingerprint")
    try:
        saved = json.loads(raw) if raw else None  # metadata values are JSON
    except ValueError:
        saved = raw
    now = dataset.corpus.fingerprint
    if saved and saved != now:
        raise DataError(
            f"--resume {run_dir}: the corpus {dataset.corpus.name} changed since the run was trained (fingerprint "
            f"{saved[:12]} -> {now[:12]}); restore the data it was trained on to continue, or train a new run on "
            "the new data (--out or --name)"
        )


# What `--resume` may change: when to stop, how often to evaluate and save, the lr schedule (computed every step),
# where and how fast it runs, and the health thresholds. Everything else is fixed by the checkpoint: the data and
# tokenizer, the model's shape, the batch, the optimizer and the hyper-parameters its state carries (betas,
# weight decay, momentum), the seed that orders the batches.
RESUME_MAY_CHANGE = {
    *(f"train.{k}" for k in ("max_steps", "max_tokens", "epochs", "time", "patience", "eval_interval")),
    *(f"train.{k}" for k in ("checkpoint_interval", "sample_prompt", "sample_tokens", "device", "dtype")),
    *(f"train.{k}" for k in ("compile", "threads", "parallel", "micro_batch_size", "lr", "min_lr", "schedule")),
    *(f"train.{k}" for k in ("warmup_steps", "grad_clip", "keep_checkpoints", "decay_fraction", "decay_shape")),
    *(f"train.{k}" for k in ("target", "stop_at_target")),
    "model.checkpoint_activations",  # recomputes the same activations: the math is unchanged
    *(f"health.{f.name}" for f in fields(HealthConfig)),
}


def check_resume_changes(saved: RunConfig, new: RunConfig, run_dir: Path) -> None:
    """ConfigError for the first setting a resume of `saved` may not change, with the way out; before any write."""
    for key in all_keys():
        section, name = key.split(".")
        before, after = getattr(getattr(saved, section), name), getattr(getattr(new, section), name)
        if before != after and key not in RESUME_MAY_CHANGE:
            raise ConfigError(
                f"--resume cannot change {key} ({short(before)} -> {short(after)}): the checkpoint in {run_dir} "
                f"was trained with {short(before)}; drop that --set to continue, or start a new run with it "
                "(--out or --name); a resume may change when it stops, the lr schedule, intervals, device and "
                "health thresholds"
            )


def refuse_if_live(run_dir: Path) -> None:
    """RunLockedError (with the holder's pid) when another live process trains into `run_dir`: checked first,
    so that the refusal says why, whatever else the directory holds."""
    from tuilm.runlock import RunLock, holder

    if Path(run_dir).is_dir() and holder(run_dir) is not None:
        RunLock(run_dir).acquire().release()  # raises, naming the holder (unless it just finished)


def release_run_dir(trainer) -> None:
    """Let the run dir's lock go (the process ending does it too)."""
    lock = trainer.run_lock
    if lock is not None:
        lock.release()


def pretrained_start(config: RunConfig, run_dir: Path, resume: bool):
    """(config, tokenizer, weights folder) for a resumed run, a run from pre-trained GPT-2 (train.init) or one
    with a given tokenizer (data.tokenizer); (config, None, None) otherwise: the tokenizer is tuilm's own BPE."""
    if resume:
        # The checkpoint has the architecture, the weights and the tokenizer already. Its own tokenizer, not
        # one trained again: another tuilm version's rule (or a changed cache) could learn other merges and
        # scramble the token ids the weights were trained on.
        from tuilm.checkpoint.metadata import read_tokenizer

        return config, read_tokenizer(run_dir / "last.safetensors"), None
    if not (config.train.init or config.data.tokenizer):
        return config, None, None
    from tuilm.model import pretrained

    folder = None
    if config.train.init:
        config, folder = pretrained.init_config(config, config.train.init)
    return config, pretrained.load_tokenizer(pretrained.resolve(config.data.tokenizer or config.train.init)), folder


def attach_files(trainer):
    """metrics.jsonl for the run; the caller closes it when the run is over."""
    from tuilm.train.metrics_file import MetricsFile

    metrics = MetricsFile(trainer.run_dir / "metrics.jsonl")
    trainer.bus.subscribe(metrics)
    return metrics


STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class Interrupt:
    """Ctrl-C while training: the first one stops the current trainer after its step (it saves) and says what
    happens next; a second one leaves at once (checkpoints already written stay intact: every write is atomic).
    SIGTERM and SIGHUP (a `kill`, a closed terminal) count as Ctrl-C."""

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
        previous = {sig: signal.signal(sig, self) for sig in STOP_SIGNALS}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


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
        if trainer.thread is None or not trainer.thread.is_alive():  # over (a second Ctrl-C leaves it running)
            release_run_dir(trainer)


def write_error_log(run_dir: Path, error: BaseException) -> str:
    """The traceback in run_dir/error.log; returns the note that says where it is ("" when it could not)."""
    from tuilm.atomic import atomic_write_text

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "error.log", "".join(traceback.format_exception(error)))
    except OSError:
        return ""
    return f" (traceback in {run_dir / 'error.log'})"


def what_is_kept(run_dir: Path, fix: str) -> str:
    """What a failed run left to continue from, with what to do (`fix`), as the end of its one-line error."""
    from tuilm.checkpoint import read_metadata
    from tuilm.checkpoint.paths import LAST

    try:
        step = int(read_metadata(run_dir / LAST).get("step", "-1"))
    except (TuilmError, OSError, ValueError):
        return f"no checkpoint of this run was written: {fix}, then train again"
    return f"the checkpoint of step {step} is intact: {fix}, then tuilm train --resume {run_dir}"


def report_outcome(trainer) -> int:
    """Exit status for a finished trainer: 0 done, 2 for a problem with the input, 1 for anything else."""
    if trainer.error is None:
        result = trainer.result
        if result is not None and result.status == "diverged":
            from tuilm.train.remedies import REMEDIES

            if trainer.dist.main:
                remedy = REMEDIES.get(result.reason, REMEDIES["nonfinite"])[0]
                print_error(
                    f"training diverged ({result.reason}) at step {result.step}: {remedy}; "
                    f"`tuilm health {trainer.run_dir}` shows where it went wrong; "
                    + what_is_kept(trainer.run_dir, "change that")
                )
            return 1
        return 0
    error = trainer.error
    if isinstance(error, TuilmError):
        raise error
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        raise ConfigError(
            f"no space left on device at step {trainer.step} while writing {error.filename or trainer.run_dir}; "
            f"{what_is_kept(trainer.run_dir, 'free some space')}"
        )
    dist = trainer.dist
    from tuilm.train.distributed import peer_lost

    if dist.active and peer_lost(error):  # another rank died: its line (or the launcher's) says why
        return 1
    where = write_error_log(trainer.run_dir, error) if dist.main else ""  # rank 0 alone writes the run directory
    rank = f"rank {dist.rank}: " if dist.active else ""
    print_error(f"{rank}training failed at step {trainer.step}: {type(error).__name__}: {error}{where}")
    return 1
