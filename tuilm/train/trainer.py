"""The training loop. It runs in a background thread, takes commands through thread-safe controls and reports
only through events, so any front end (dashboard, progress bar, a test) can drive and watch it.

Construction does everything that can fail on bad input (device, model, resume state) in the caller's thread,
so such errors surface as one clear line before training starts; `run()` is the loop itself.

The helpers of a step (backward, lean, accel, rewind, reports, overfit, lrfind, distributed.refused) take the
trainer and use its public surface only: `emit(event)` for every event, `set_lr(lr)` and `lr_now(step)` for the
learning rate, `batches` (BatchSource: the step's rows, this rank's share, the micro-batch size `micro`),
`nonfinite_streak` and `last_batch` for the non-finite policy, and the parts built here (model, forward,
optimizer, scaler, ema, reducer, params, device, precision, dist, config, tcfg, health, guard, pending, state, clock).
Every attribute is created in __init__.
"""

from __future__ import annotations

import math
import time
import traceback
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch

from tuilm.checkpoint.run_files import RunFiles
from tuilm.config import RunConfig
from tuilm.data.dataset import Dataset
from tuilm.flops import run_flops
from tuilm.model import GPT
from tuilm.model.weights import weights_finite
from tuilm.sampling import SamplingSettings, sample_text
from tuilm.train import accel, distributed, ema, optim, target, workers
from tuilm.train import events as ev
from tuilm.train.backward import ENDING_STREAK, apply_update, clear_grads, healing_backward, non_finite
from tuilm.train.batches import BatchSource, to_device
from tuilm.train.controls import Controls
from tuilm.train.evaluate import evaluate
from tuilm.train.health import HealthMonitor
from tuilm.train.lean import Pending, flush, lean_possible, lean_step, logged
from tuilm.train.reports import checkpoint_meta, eval_event, finished_event, started_event, step_event
from tuilm.train.rewind import SpikeGuard
from tuilm.train.schedule import lr_at, wsd_start
from tuilm.train.state import TrainState
from tuilm.train.stops import StopRules


class Trainer(Controls):
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
        super().__init__()
        self.dist = distributed.current()  # world 1 unless launched by torchrun
        self.run_dir = Path(run_dir)
        self.name = name or self.run_dir.name
        self.bus = bus or ev.EventBus()
        self.dataset = dataset
        t = config.train
        self.device, self.precision = accel.setup_device(t, self.dist)
        self.config = replace(config, model=replace(config.model, vocab_size=dataset.tokenizer.vocab_size))
        self.tcfg = t
        self.files = RunFiles(self.run_dir, dataset.tokenizer, self.config.to_dict())
        self.rows_per_step = config.rows_per_step
        self.dist.check_batch(self.rows_per_step)
        torch.manual_seed(t.seed)
        self.model = GPT(self.config.model).to(self.device)
        # train.parallel / train.threads: torch's own threads, one for a tiny step, or the rows split (workers.py)
        self.cores, self.workers = workers.setup(self.config, self.device, self.precision, self.dist.world, self.model)
        self.batches = BatchSource(
            dataset, self.rows_per_step, t.micro_batch_size, t.seed, config.data.doc_mask, self.dist, self.cores.workers
        )
        self.steps_per_epoch = self.batches.steps_per_epoch
        self.rules = StopRules.of(t, self.steps_per_epoch)
        self.ddp = distributed.wrap(self.model, self.device, self.dist)  # the model itself in one process
        self.forward = accel.compiled(self.ddp, t.compile, self.device)  # compile = auto: on CUDA
        self.flops = run_flops(self.model, self.device, self.dist.world, self.cores.used())  # for MFU beside tokens/s
        self.optimizer = optim.build_optimizer(self.model, t, self.device)
        self.ema = ema.build(self.model, t.ema)  # train.ema: the weights' moving average (train/ema.py)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision.scaler else None
        init_vocab = None if t.init else self.config.model.vocab_size  # pre-trained weights start below ln(vocab)
        self.health = HealthMonitor(self.model, self.optimizer, config.health, self.emit, t.warmup_steps, init_vocab)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.reducer = distributed.reducer(self.params, self.dist)  # None in one process; see train/overlap.py
        self.lean = lean_possible(self.optimizer, self.scaler, self.dist, t.log_interval)  # see train/lean.py
        self.pending = Pending()
        self.guard = SpikeGuard(config.health, self.dist)  # health.on_spike: skip, stop or rewind (train/rewind.py)

        self.state = TrainState()  # saved with every checkpoint, restored on resume
        self.last_eval: ev.Eval | None = None
        self.nonfinite_streak = 0  # non-finite steps in a row
        self.last_batch: tuple | None = None  # the last micro-batch on the device: a non-finite step's replay
        self.session_start, self.session_start_step = (0, 0.0), 0  # (tokens, elapsed), step: when run() started
        # When the last step's timing ended: the next step's starts there, so that a step's time is the whole loop
        # around it (events, metrics.jsonl, the progress bar), as nanoGPT's per-iteration time is. None after
        # what is not training (evaluation, checkpoints, samples, a pause), whose seconds `apart` keeps instead.
        self.clock: float | None = None
        self.apart = {"eval": 0.0, "checkpoint": 0.0, "compile": 0.0}
        self.result: ev.Finished | None = None
        self.error: BaseException | None = None
        self.resumed_step = 0  # _load_state sets it
        if resume:
            self._load_state()
        self.resumed_progress = self.progress if resume else 0.0  # wsd: a cooldown branch decays from here

    @property
    def step(self) -> int:
        return self.state.step

    @property
    def progress(self) -> float:
        """0..1 towards the first stopping criterion to be reached; nan when none is set."""
        return self.rules.progress(self.state)

    # -- the loop ---------------------------------------------------------------------------------------------

    def run(self) -> ev.Finished | None:
        try:
            self.session_start, self.session_start_step = (self.state.tokens, self.state.elapsed), self.step
            self.guard.keep(self)
            self.emit(started_event(self))
            accel.start(self)  # notices for this device; micro_batch_size = auto: the largest that fits
            self.emit(ev.Status(self.step, "running"))
            reason = self._loop()
            self.result = self._finish(reason)
        except BaseException as e:  # report everything, even KeyboardInterrupt in a foreground run
            self.error = e
            self.emit(ev.Failed(self.step, f"{type(e).__name__}: {e}", traceback.format_exc()))
            if not isinstance(e, Exception):
                raise
        finally:
            self.workers = workers.close(self.workers)  # the run is over (a later evaluation: this thread alone)
        return self.result

    def _loop(self) -> str:
        while True:
            self._handle_requests()
            if self._stop.is_set():
                return self._stop_reason
            if self._hold_while_paused(lambda state: self.emit(ev.Status(self.step, state))):
                self.clock = None
                continue
            reason = self.rules.reason(self.state)
            if reason:
                return reason
            if self._train_step() or self._stop.is_set():  # rewound: the step it went back to had its turn
                continue
            if self.step % self.tcfg.eval_interval == 0:
                self._evaluate()
                if self.tcfg.patience and self.state.evals_since_best >= self.tcfg.patience:
                    return "early_stop"
                if self.tcfg.stop_at_target and self.state.target_hit:
                    return "target"
            if self.step % self.tcfg.checkpoint_interval == 0:
                self._save("interval")

    def _train_step(self) -> bool:
        t0 = time.perf_counter() if self.clock is None else self.clock
        s = self.state
        micro_batches = self.batches.next_step(s)  # this rank's shard of the step
        n_targets = self.dist.sum_int(sum(b.n_targets for b in micro_batches), self.device)
        health_step = self.dist.main and self.health.due(s.step + 1)
        if self.lean and not (health_step or logged(self, s.step + 1)):
            return lean_step(self, micro_batches, n_targets, t0)
        loss_sum, grad_norm = healing_backward(self, micro_batches, n_targets, health_step)
        lr = self.lr_now(s.step)
        skipped = self._optimizer_step(lr, float(loss_sum) / max(1, n_targets), grad_norm, health_step)
        s.step += 1
        s.tokens += n_targets
        if health_step and not skipped:
            self.health.measure(s.step, micro_batches[0], partial(to_device, device=self.device))
        self.clock = time.perf_counter()
        step_time = self.clock - t0
        if self.step == self.session_start_step + 1 and self.forward is not self.ddp:
            self._compiled_first_step(step_time)
        loss_sum, stop, s.elapsed = self.dist.agree(loss_sum, bool(self._stop_wanted), s.elapsed + step_time)
        if stop:
            self._agreed_stop()
        p_loss, p_tokens, p_steps, p_seconds, p_bad = self.pending.take()  # the unlogged steps before this one
        if p_bad:
            self.emit(ev.Log(s.step, f"{p_bad} non-finite step(s) before step {s.step} skipped", "warning"))
            if self.config.health.nonfinite == "stop":
                self.stop("nonfinite")
        tokens, seconds = n_targets + p_tokens, step_time + p_seconds
        loss_value, spiked = (float(loss_sum) + p_loss) / max(1, tokens), False
        if math.isfinite(loss_value) and math.isfinite(grad_norm):
            s.train_losses.append(loss_value)
            spiked = self.health.check_step(s.step, loss_value, grad_norm)
        event = step_event(self, tokens, loss_value, lr, seconds, grad_norm, skipped or p_bad > 0)
        self.emit(replace(event, step_time=seconds / (1 + p_steps)) if p_steps else event)
        return self.guard.after_step(self, spiked, skipped or p_bad > 0)

    def _optimizer_step(self, lr: float, loss_value: float, grad_norm: float, health_step: bool) -> bool:
        """Apply the gradients at learning rate `lr`, or skip a non-finite step; returns True when skipped."""
        self.set_lr(lr)
        skipped = False
        if not (math.isfinite(loss_value) and math.isfinite(grad_norm)) and self.scaler is None:
            skipped = non_finite(self, loss_value, grad_norm)
        elif self.guard.skips(self, loss_value):  # health.on_spike = skip: a spiking step's update is dropped
            skipped = True
        else:
            self.nonfinite_streak = 0
            if health_step:
                self.health.snapshot()
            apply_update(self)
            if self.ema:
                self.ema.update(self.step + 1)
        clear_grads(self)
        return skipped

    def _compiled_first_step(self, seconds: float) -> None:
        """torch.compile compiles in the first step: its seconds are shown apart, and tokens/s starts after it."""
        self.apart["compile"] += seconds
        self.session_start = (self.state.tokens, self.state.elapsed + seconds)

    def lr_now(self, step: int) -> float:
        """The scheduled learning rate of `step`, at the run's progress now (wsd: see schedule.wsd_start)."""
        progress = self.progress
        return lr_at(step, progress, self.tcfg, wsd_start(self.tcfg, self.state, progress, self.resumed_progress))

    def set_lr(self, lr: float) -> None:
        optim.set_lr(self.optimizer, lr, self.tcfg.lr)  # each group at its own peak: Muon's at muon_lr

    # -- evaluation, samples, checkpoints ------------------------------------------------------------------------

    def _evaluate(self) -> ev.Eval:
        flush(self)
        self.emit(ev.Status(self.step, "evaluating"))
        t0 = time.perf_counter()
        self.clock = None
        scoring = partial(evaluate, dataset=self.dataset, device=self.device, precision=self.precision, dist=self.dist)
        result = scoring(self.model, workers=self.workers)
        averaged = self.ema and scoring(self.ema.module, workers=self.workers)
        weights = "ema" if averaged and averaged.loss < result.loss else "model"
        best = averaged if weights == "ema" else result
        is_best = self.state.record_eval(best.loss, best.bpc, weights)
        train_loss = self.state.take_train_loss()
        seconds = time.perf_counter() - t0
        self.last_eval = event = eval_event(
            self.step, result, averaged, weights, self.state.best_val_loss, is_best, train_loss, seconds
        )
        self.emit(event)
        self.health.on_eval(self.step, result.loss, train_loss)
        if self.tcfg.target and not self.state.target_hit:
            s = self.state
            s.target_hit = target.reached(self.tcfg.target, event, s.tokens, s.elapsed, self.flops.per_token)
        if is_best:
            self._save_model(self.files.best, "best", weights)
        if self.tcfg.sample_tokens and math.isfinite(result.loss) and self.dist.main:  # diverged: nothing to say
            self._sample(self.tcfg.sample_prompt)
        self.emit(ev.Status(self.step, "paused" if self.paused else "running"))
        self.apart["eval"] += time.perf_counter() - t0
        return event

    def _sample(self, prompt: str) -> str:
        if not weights_finite(self.model):
            self.emit(ev.Log(self.step, "no sample: the model's weights are no longer finite", "warning"))
            return ""
        # A generator of its own, seeded by the step, leaves the training RNG untouched (resumes stay exact).
        settings = SamplingSettings(max_new_tokens=self.tcfg.sample_tokens)
        self.clock = None
        text = sample_text(self.model, self.dataset.tokenizer, prompt, settings, seed=self.tcfg.seed + self.step)
        self.emit(ev.Sample(self.step, prompt, text))
        return text

    def _save_model(self, path: Path, reason: str, weights: str = "model") -> None:
        model = self.ema.module if weights == "ema" else self.model
        if not self.dist.main or not weights_finite(model):  # rank 0 alone writes; NaN weights are no best
            return
        t0 = time.perf_counter()
        self.files.save_model(path, model, checkpoint_meta(self, weights))
        self.apart["checkpoint"] += time.perf_counter() - t0
        self.emit(ev.CheckpointSaved(self.step, str(path), reason))

    def _save(self, reason: str) -> Path | None:
        """last.safetensors and train_state.safetensors, the pair a resume needs. Weights gone non-finite are never
        saved: the run stops as diverged, and the previous pair (if any) stays the resume point."""
        flush(self)
        if not weights_finite(self.model):
            self.stop("nonfinite")
            return self.files.last if self.files.last.is_file() else None
        self.emit(ev.Status(self.step, "saving"))
        t0, self.clock = time.perf_counter(), None
        extra = {**self.state.to_dict(), "scaler": self.scaler.state_dict() if self.scaler else None}
        extra["health"] = self.health.state_dict()
        if self.dist.main:  # rank 0 alone writes the run directory
            averaged = self.ema.tensors() if self.ema else None
            self.files.save_resume_point(
                self.model, self.optimizer, checkpoint_meta(self), extra, self.device, averaged
            )
            if reason == "interval":  # train.keep_checkpoints: step-<STEP>.safetensors beside last.safetensors
                self.files.keep_step(self.model, checkpoint_meta(self), self.tcfg.keep_checkpoints)
        self.guard.keep(self)  # a resume would start from this state: so does a rewind (train/rewind.py)
        self.apart["checkpoint"] += time.perf_counter() - t0
        self.emit(ev.CheckpointSaved(self.step, str(self.files.last), reason))
        self.emit(ev.Status(self.step, "paused" if self.paused else "running"))
        return self.files.last

    def _load_state(self) -> None:
        extra = self.files.load_resume_point(self.model, self.optimizer, self.device, self.ema)
        optim.stamp_peaks(self.optimizer, self.tcfg)  # the saved groups hold the old peaks: this run's are the config's
        self.state = TrainState.from_dict(extra)
        if self.scaler and extra.get("scaler"):
            self.scaler.load_state_dict(extra["scaler"])
        self.health.load_state_dict(extra.get("health") or {})
        self.resumed_step = self.step

    def _handle_requests(self) -> None:
        for action, kwargs in self.pending_requests():
            if action == "save":
                self._save("request")
            elif action == "eval" and not distributed.refused(self, "evaluating now"):
                self._evaluate()
            elif action == "sample":
                self._sample(kwargs.get("prompt") or self.tcfg.sample_prompt)

    def _finish(self, reason: str) -> ev.Finished:
        flush(self)
        self.emit(ev.Status(self.step, "stopping"))
        if (
            not weights_finite(self.model) or self.nonfinite_streak >= ENDING_STREAK
        ):  # fewer than MAX_SKIPS: diverged still
            reason = "nonfinite"
        elif self.step > 0 and (self.last_eval is None or self.last_eval.step != self.step):
            self._evaluate()
        last = self._save("end" if reason not in ("stopped", "interrupted") else "stop") if self.step > 0 else None
        finished = finished_event(self, reason, last)
        self.emit(finished)
        return finished

    def emit(self, event: ev.Event) -> None:
        """Every event of the run goes out here (the helpers in train/ too): the bus hands it to subscribers."""
        self.bus.emit(event)

    def ranks_must_agree(self) -> bool:
        return self.dist.active  # every rank ends at the same step

    def pause(self) -> None:
        if not distributed.refused(self, "pause"):  # under DDP the other ranks would wait in the step's all-reduce
            super().pause()
