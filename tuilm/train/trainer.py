"""The training loop. It runs in a background thread, takes commands through thread-safe controls and reports
only through events, so any front end (dashboard, progress bar, a test) can drive and watch it.

Construction does everything that can fail on bad input (device, model, resume state) in the caller's thread,
so such errors surface as one clear line before training starts; `run()` is the loop itself.
"""

from __future__ import annotations

import math
import queue
import threading
import time
import traceback
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tuilm.checkpoint import (
    load_train_state,
    load_weights,
    read_metadata,
    read_weights,
    save_checkpoint,
    save_train_state,
)
from tuilm.config import RunConfig, parse_duration
from tuilm.data.dataset import Dataset
from tuilm.data.pipeline import IGNORE, Batch, collate, epoch_batches
from tuilm.errors import CheckpointError
from tuilm.model import GPT
from tuilm.sampling import SamplingSettings, generate, make_generator
from tuilm.train import events as ev
from tuilm.train.device import memory_mb, pick_device, pick_precision
from tuilm.train.evaluate import evaluate
from tuilm.train.health import HealthMonitor
from tuilm.train.optim import build_optimizer, lr_at

LAST, BEST, STATE = "last.safetensors", "best.safetensors", "train_state.safetensors"
MAX_SKIPS = 10  # non-finite steps in a row before a `skip` policy gives up


class Trainer:
    def __init__(
        self,
        config: RunConfig,
        dataset: Dataset,
        run_dir: Path,
        bus: ev.EventBus | None = None,
        *,
        name: str | None = None,
        resume: bool = False,
    ):
        self.run_dir = Path(run_dir)
        self.name = name or self.run_dir.name
        self.bus = bus or ev.EventBus()
        self.dataset = dataset
        t = config.train
        if t.threads:
            torch.set_num_threads(t.threads)
        self.device = pick_device(t.device)
        self.precision = pick_precision(self.device, t.dtype)
        self.config = replace(config, model=replace(config.model, vocab_size=dataset.tokenizer.vocab_size))
        self.tcfg = t
        self.time_budget = parse_duration(t.time) if t.time else 0.0
        self.rows_per_step = config.rows_per_step
        self.micro = min(t.micro_batch_size or self.rows_per_step, self.rows_per_step)
        self.steps_per_epoch = len(epoch_batches(dataset.train_rows, self.rows_per_step, t.seed, 0))

        torch.manual_seed(t.seed)
        self.model = GPT(self.config.model).to(self.device)
        self.forward = torch.compile(self.model) if t.compile else self.model
        self.optimizer = build_optimizer(self.model, t, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision.scaler else None
        self.health = HealthMonitor(self.model, self.optimizer, config.health, self._emit, t.warmup_steps)

        # Counters that make up the training state (saved with every checkpoint, restored on resume).
        self.step = 0
        self.tokens = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.elapsed = 0.0  # seconds spent in training steps: evaluation, saving and pauses do not count
        self.best_val_loss = math.inf
        self.best_val_bpc = math.inf
        self.last_eval: ev.Eval | None = None
        self.evals_since_best = 0
        self._train_losses: list[float] = []  # since the last evaluation
        self._epoch_cache: tuple[int, list[np.ndarray]] | None = None
        self._skips = 0  # non-finite steps in a row
        self._start_tokens, self._start_elapsed = 0, 0.0  # at run() start, for this session's tokens/s

        self._stop = threading.Event()
        self._running = threading.Event()
        self._running.set()
        self._stop_reason = "stopped"
        self._requests: queue.SimpleQueue[tuple[str, dict]] = queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        self.result: ev.Finished | None = None
        self.error: BaseException | None = None
        self.resumed_step = 0
        if resume:
            self._load_state()

    # -- controls (any thread) --------------------------------------------------------------------------------

    def start(self) -> threading.Thread:
        self.thread = threading.Thread(target=self.run, name="tuilm-trainer", daemon=True)
        self.thread.start()
        return self.thread

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def toggle_pause(self) -> bool:
        """Pause or resume; returns True when now paused."""
        if self._running.is_set():
            self.pause()
            return True
        self.resume()
        return False

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def stop(self, reason: str = "stopped") -> None:
        """Finish the current step, save the last checkpoint and end (thread-safe, returns at once)."""
        self._stop_reason = reason
        self._stop.set()
        self._running.set()

    def request(self, action: str, **kwargs) -> None:
        """Ask for `save`, `eval` or `sample` (optional prompt=...) between steps, paused or not."""
        if action not in ("save", "eval", "sample"):
            raise ValueError(f"unknown request {action!r}")
        self._requests.put((action, kwargs))

    def join(self, timeout: float | None = None) -> None:
        if self.thread is not None:
            self.thread.join(timeout)

    # -- the loop ---------------------------------------------------------------------------------------------

    def run(self) -> ev.Finished | None:
        try:
            self._emit(self._started_event())
            if self.tcfg.compile:
                self._emit(ev.Log(self.step, "torch.compile: the first step compiles the model, which takes a while"))
            self._emit(ev.Status(self.step, "running"))
            reason = self._loop()
            self.result = self._finish(reason)
        except BaseException as e:  # report everything, even KeyboardInterrupt in a foreground run
            self.error = e
            self._emit(ev.Failed(self.step, f"{type(e).__name__}: {e}", traceback.format_exc()))
            if not isinstance(e, Exception):
                raise
        return self.result

    def _loop(self) -> str:
        announced_pause = False
        while True:
            self._handle_requests()
            if self._stop.is_set():
                return self._stop_reason
            if not self._running.is_set():
                if not announced_pause:
                    self._emit(ev.Status(self.step, "paused"))
                    announced_pause = True
                self._running.wait(0.05)
                continue
            if announced_pause:
                self._emit(ev.Status(self.step, "running"))
                announced_pause = False
            reason = self._stop_criterion()
            if reason:
                return reason
            self._train_step()
            if self._stop.is_set():
                continue
            if self.step % self.tcfg.eval_interval == 0:
                self._evaluate()
                if self.tcfg.patience and self.evals_since_best >= self.tcfg.patience:
                    return "early_stop"
            if self.step % self.tcfg.checkpoint_interval == 0:
                self._save("interval")

    def _stop_criterion(self) -> str | None:
        t = self.tcfg
        if t.max_steps and self.step >= t.max_steps:
            return "max_steps"
        if t.max_tokens and self.tokens >= t.max_tokens:
            return "max_tokens"
        if t.epochs and self.epochs_done >= t.epochs:
            return "epochs"
        if self.time_budget and self.elapsed >= self.time_budget:
            return "time"
        return None

    @property
    def epochs_done(self) -> float:
        return self.epoch + self.batch_in_epoch / max(1, self.steps_per_epoch)

    @property
    def progress(self) -> float:
        """0..1 towards the first stopping criterion to be reached; nan when none is set."""
        t = self.tcfg
        fractions = [
            self.step / t.max_steps if t.max_steps else None,
            self.tokens / t.max_tokens if t.max_tokens else None,
            self.epochs_done / t.epochs if t.epochs else None,
            self.elapsed / self.time_budget if self.time_budget else None,
        ]
        known = [f for f in fractions if f is not None]
        return max(known) if known else math.nan

    @property
    def max_steps(self) -> int | None:
        t = self.tcfg
        candidates = [t.max_steps or None, math.ceil(t.epochs * self.steps_per_epoch) if t.epochs else None]
        known = [c for c in candidates if c]
        return min(known) if known else None

    def _next_rows(self) -> np.ndarray:
        if self._epoch_cache is None or self._epoch_cache[0] != self.epoch:
            rows = self.dataset.train_rows
            self._epoch_cache = (self.epoch, epoch_batches(rows, self.rows_per_step, self.tcfg.seed, self.epoch))
        batches = self._epoch_cache[1]
        index = batches[self.batch_in_epoch]
        self.batch_in_epoch += 1
        if self.batch_in_epoch >= len(batches):
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        return index

    def _collate(self, index: np.ndarray) -> Batch:
        rows = self.dataset.train_rows
        return collate(
            rows,
            index,
            eos_id=self.dataset.tokenizer.eos_id,
            doc_mask=self.config.data.doc_mask and rows.policy == "pack",
            trim=rows.policy == "bucket",
        )

    def _tensors(self, batch: Batch):
        def put(a):
            return None if a is None else torch.from_numpy(a).to(self.device, non_blocking=True)

        return put(batch.inputs), put(batch.targets), put(batch.pos_ids), put(batch.doc_ids)

    def _train_step(self) -> None:
        t0 = time.perf_counter()
        index = self._next_rows()
        micro = [self._collate(index[i : i + self.micro]) for i in range(0, len(index), self.micro)]
        # The loss is the sum over every target token of the step divided by their count, whatever the padding
        # or accumulation: each micro-batch adds its summed loss / the step's total, so the gradient is exactly
        # the full batch's.
        n_targets = sum(b.n_targets for b in micro)
        health_step = self.health.due(self.step + 1)
        loss_sum = torch.zeros((), device=self.device)
        model = self.model if health_step else self.forward  # hooks need the eager module
        with self.health.activation_hooks(health_step):
            for batch in micro:
                x, y, pos, doc = self._last_batch = self._tensors(batch)
                with self.precision.autocast(self.device):
                    logits = model(x, pos_ids=pos, doc_ids=doc)
                loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE, reduction="sum")
                scaled = loss / n_targets
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
                loss_sum += loss.detach()
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if health_step:
            self.health.record_grads()
        params = [p for p in self.model.parameters() if p.grad is not None]
        # Norm first, clip after the finiteness check: clipping by a NaN norm would turn every gradient into
        # NaN and hide which parameter was the source.
        norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
        grad_norm = float(norm)
        loss_value = float(loss_sum) / max(1, n_targets)
        if self.tcfg.grad_clip and math.isfinite(grad_norm):
            torch.nn.utils.clip_grads_with_norm_(params, self.tcfg.grad_clip, norm, foreach=True)
        lr = lr_at(self.step, self.progress, self.tcfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

        finite = math.isfinite(loss_value) and math.isfinite(grad_norm)
        skipped = False
        if not finite and self.scaler is None:
            skipped = self._non_finite(loss_value, grad_norm)
        else:
            self._skips = 0
            if health_step:
                self.health.snapshot()
            if self.scaler:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

        self.step += 1
        self.tokens += n_targets
        step_time = time.perf_counter() - t0
        if health_step and not skipped:
            self.health.measure(self.step, micro[0], self._tensors)
            step_time = time.perf_counter() - t0
        self.elapsed += step_time
        if finite:
            self._train_losses.append(loss_value)
            self.health.check_step(self.step, loss_value, grad_norm)
        rate = n_targets / step_time if step_time > 0 else 0.0
        self._emit(
            ev.Step(
                step=self.step,
                epoch=round(self.epochs_done, 4),
                tokens=self.tokens,
                loss=loss_value,
                lr=lr,
                tokens_per_s=rate,
                step_time=step_time,
                grad_norm=grad_norm,
                clipped=bool(self.tcfg.grad_clip and grad_norm > self.tcfg.grad_clip),
                elapsed=self.elapsed,
                progress=self.progress,
                loss_scale=float(self.scaler.get_scale()) if self.scaler else None,
                memory_mb=memory_mb(self.device),
                skipped=skipped,
            )
        )

    def _non_finite(self, loss_value: float, grad_norm: float) -> bool:
        """A NaN/Inf loss or gradient: alert, then skip the step, or stop (health.nonfinite = stop).

        Skipping helps with a rare bad batch; when every step is non-finite the weights themselves are gone,
        so after MAX_SKIPS in a row training stops as diverged instead of spinning.
        """
        self._skips += 1
        stop = self.config.health.nonfinite == "stop" or self._skips >= MAX_SKIPS
        if self.config.health.nonfinite == "stop":
            action = "training stopped"
        elif stop:
            action = f"{self._skips} steps in a row were skipped, training stopped"
        else:
            action = "step skipped"
        x, _, pos, doc = self._last_batch
        self.health.non_finite(
            self.step + 1, loss_value, grad_norm, action, lambda: self.model(x, pos_ids=pos, doc_ids=doc)
        )
        if stop:
            self.stop("nonfinite")
        return True

    # -- evaluation, samples, checkpoints ------------------------------------------------------------------------

    def _evaluate(self) -> ev.Eval:
        self._emit(ev.Status(self.step, "evaluating"))
        t0 = time.perf_counter()
        result = evaluate(self.model, self.dataset, self.device, self.precision)
        is_best = result.loss < self.best_val_loss
        if is_best:
            self.best_val_loss, self.best_val_bpc = result.loss, result.bpc
            self.evals_since_best = 0
        else:
            self.evals_since_best += 1
        train_loss = float(np.mean(self._train_losses)) if self._train_losses else math.nan
        self._train_losses = []
        event = ev.Eval(
            step=self.step,
            val_loss=result.loss,
            val_ppl=result.ppl,
            val_bpc=result.bpc,
            best_val_loss=self.best_val_loss,
            is_best=is_best,
            train_loss=train_loss,
            seconds=time.perf_counter() - t0,
        )
        self.last_eval = event
        self._emit(event)
        self.health.on_eval(self.step, result.loss, train_loss)
        if is_best:
            self._save_model(self.run_dir / BEST, "best")
        if self.tcfg.sample_tokens and math.isfinite(result.loss):  # a diverged model has nothing to say
            self._sample(self.tcfg.sample_prompt)
        self._emit(ev.Status(self.step, "paused" if self.paused else "running"))
        return event

    def _sample(self, prompt: str) -> str:
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            self._emit(ev.Log(self.step, "no sample: the model's weights are no longer finite", "warning"))
            return ""
        tokenizer = self.dataset.tokenizer
        settings = SamplingSettings(temperature=0.8, top_p=0.95, max_new_tokens=self.tcfg.sample_tokens)
        # A generator of its own, seeded by the step, leaves the training RNG untouched (resumes stay exact).
        generator = make_generator(self.tcfg.seed + self.step, self.device)
        context = [tokenizer.eos_id, *tokenizer.encode(prompt)]
        ids = list(generate(self.model, context, settings, generator=generator))
        text = tokenizer.decode(ids)
        self._emit(ev.Sample(self.step, prompt, text))
        return text

    def _meta(self) -> dict:
        last = self.last_eval
        return {
            "step": self.step,
            "tokens": self.tokens,
            "epoch": round(self.epochs_done, 4),
            "val_loss": last.val_loss if last else None,
            "val_bpc": last.val_bpc if last else None,
            "best_val_loss": self.best_val_loss if math.isfinite(self.best_val_loss) else None,
            "data_fingerprint": self.dataset.corpus.fingerprint,
            "data": self.dataset.summary(),
            "run": self.name,
            "recipe": self.config.recipe,
        }

    def _save_model(self, path: Path, reason: str) -> None:
        save_checkpoint(path, self.model, self.dataset.tokenizer, self.config.to_dict(), **self._meta())
        self._emit(ev.CheckpointSaved(self.step, str(path), reason))

    def _save(self, reason: str) -> Path:
        """last.safetensors and train_state.safetensors, the pair a resume needs."""
        self._emit(ev.Status(self.step, "saving"))
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        extra = {
            "step": self.step,
            "tokens": self.tokens,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "elapsed": self.elapsed,
            "best_val_loss": self.best_val_loss if math.isfinite(self.best_val_loss) else None,
            "best_val_bpc": self.best_val_bpc if math.isfinite(self.best_val_bpc) else None,
            "evals_since_best": self.evals_since_best,
            "train_losses": self._train_losses,
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "health": self.health.state_dict(),
        }
        save_train_state(self.run_dir / STATE, self.optimizer, extra, rng)
        self._save_model(self.run_dir / LAST, reason)
        self._emit(ev.Status(self.step, "paused" if self.paused else "running"))
        return self.run_dir / LAST

    def _load_state(self) -> None:
        last = self.run_dir / LAST
        meta = read_metadata(last)
        load_weights(self.model, read_weights(last), last)
        extra, rng = load_train_state(self.run_dir / STATE, self.optimizer)
        saved_step = int(meta.get("step", "-1"))
        if extra["step"] != saved_step:
            raise CheckpointError(
                f"{self.run_dir}: last.safetensors (step {saved_step}) and train_state.safetensors "
                f"(step {extra['step']}) disagree; the run was interrupted while saving"
            )
        self.step, self.tokens = extra["step"], extra["tokens"]
        self.epoch, self.batch_in_epoch = extra["epoch"], extra["batch_in_epoch"]
        self.elapsed = extra["elapsed"]
        self.best_val_loss = extra["best_val_loss"] if extra["best_val_loss"] is not None else math.inf
        self.best_val_bpc = extra["best_val_bpc"] if extra["best_val_bpc"] is not None else math.inf
        self.evals_since_best = extra["evals_since_best"]
        self._train_losses = list(extra["train_losses"])
        if self.scaler and extra.get("scaler"):
            self.scaler.load_state_dict(extra["scaler"])
        self.health.load_state_dict(extra.get("health") or {})
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.resumed_step = self.step

    def _handle_requests(self) -> None:
        while True:
            try:
                action, kwargs = self._requests.get_nowait()
            except queue.Empty:
                return
            if action == "save":
                self._save("request")
            elif action == "eval":
                self._evaluate()
            elif action == "sample":
                self._sample(kwargs.get("prompt") or self.tcfg.sample_prompt)

    def _finish(self, reason: str) -> ev.Finished:
        self._emit(ev.Status(self.step, "stopping"))
        if self.step > 0 and (self.last_eval is None or self.last_eval.step != self.step):
            self._evaluate()
        last = self._save("end" if reason not in ("stopped", "interrupted") else "stop") if self.step > 0 else None
        best = self.run_dir / BEST
        status = {"nonfinite": "diverged", "stopped": "stopped", "interrupted": "stopped"}.get(reason, "completed")
        finished = ev.Finished(
            step=self.step,
            reason=reason,
            status=status,
            elapsed=self.elapsed,
            tokens=self.tokens,
            best_val_loss=self.best_val_loss if math.isfinite(self.best_val_loss) else None,
            best_val_bpc=self.best_val_bpc if math.isfinite(self.best_val_bpc) else None,
            last_val_loss=self.last_eval.val_loss if self.last_eval else None,
            last_val_bpc=self.last_eval.val_bpc if self.last_eval else None,
            tokens_per_s=self._session_rate(),
            last_checkpoint=str(last) if last else None,
            best_checkpoint=str(best) if best.exists() else None,
            peak_memory_mb=memory_mb(self.device) if self.device.type != "mps" else None,
        )
        self._emit(finished)
        return finished

    def _session_rate(self) -> float:
        seconds = self.elapsed - self._start_elapsed
        return (self.tokens - self._start_tokens) / seconds if seconds > 0 else 0.0

    def _started_event(self) -> ev.RunStarted:
        self._start_tokens, self._start_elapsed = self.tokens, self.elapsed
        return ev.RunStarted(
            run_dir=str(self.run_dir),
            name=self.name,
            recipe=self.config.recipe,
            config=self.config.to_dict(),
            params=self.model.num_params(),
            params_no_embeddings=self.model.num_params(embeddings=False),
            device=str(self.device),
            dtype=self.precision.name,
            data=self.dataset.summary(),
            max_steps=self.max_steps,
            resumed_step=self.resumed_step,
            time=time.time(),
        )

    def _emit(self, event: ev.Event) -> None:
        self.bus.emit(event)
