"""Typed events from the trainer to whoever listens (dashboard, progress bar, metrics file, wandb).

The trainer imports no front end: it calls `bus.emit(event)` and subscribers do the rest, in the trainer's
thread, so a subscriber must be quick (the dashboard only appends to a buffer it drains on a timer).
Every event serialises to one JSON object with an "event" field, which is what metrics.jsonl holds and what
`tuilm watch` and `tuilm health` read back.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar


@dataclass(frozen=True)
class Event:
    kind: ClassVar[str] = "event"

    def to_dict(self) -> dict[str, Any]:
        # Fields hold plain values, lists and dicts (no dataclasses), and _finite copies the containers, so
        # dataclasses.asdict's deep copy, a tenth of a millisecond a Step event, would buy nothing.
        out: dict[str, Any] = {"event": self.kind}
        for k in _names(type(self)):
            v = getattr(self, k)
            out[k] = v if type(v) in _PLAIN or (type(v) is float and math.isfinite(v)) else _finite(v)
        return out


_PLAIN = frozenset({int, str, bool, type(None)})


@functools.cache
def _names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


@dataclass(frozen=True)
class RunStarted(Event):
    kind: ClassVar[str] = "run_started"
    run_dir: str
    name: str
    recipe: str
    config: dict
    params: int
    params_no_embeddings: int
    device: str
    dtype: str
    data: dict
    max_steps: int | None  # None when no criterion fixes it (time budget, or none at all)
    resumed_step: int = 0
    time: float = 0.0  # wall clock (unix seconds)
    flops_per_token: int = 0  # training FLOPs per token from the model's shape (tuilm/flops.py)
    peak_flops: float | None = None  # FLOP/s of the devices, all ranks together; None: unknown, so no MFU
    ranks: int = 1  # processes that trained it together (DDP); `device` and `dtype` are each rank's


@dataclass(frozen=True)
class Step(Event):
    kind: ClassVar[str] = "step"
    step: int
    epoch: float
    tokens: int  # target tokens seen so far
    loss: float
    lr: float
    tokens_per_s: float
    step_time: float  # seconds
    grad_norm: float  # global L2 norm before clipping
    clipped: bool
    elapsed: float  # seconds of training so far (evaluation excluded)
    progress: float  # 0..1 towards the first stopping criterion; nan when none is set
    loss_scale: float | None = None  # fp16 only
    memory_mb: float | None = None
    skipped: bool = False  # non-finite step that was dropped
    mfu: float | None = None  # model FLOPs utilisation, 0..1, at tokens_per_s; None where the peak is unknown


def measured_step(
    step, epoch, tokens, loss, lr, n_targets, step_time, grad_norm, grad_clip, elapsed, progress, **extra
):
    """A Step from what a loop measured (the arguments in Step's own order): the throughput from the step's target
    tokens and time, `clipped` from the loop's clipping threshold (0 or None: it does not clip). The trainer and
    tuilm.Monitor both report through it, so they cannot judge a step differently."""
    tokens_per_s = n_targets / step_time if step_time > 0 else 0.0
    clipped = bool(grad_clip and grad_norm > grad_clip)
    return Step(step, epoch, tokens, loss, lr, tokens_per_s, step_time, grad_norm, clipped, elapsed, progress, **extra)


@dataclass(frozen=True)
class Eval(Event):
    kind: ClassVar[str] = "eval"
    step: int
    val_loss: float
    val_ppl: float
    val_bpc: float  # bits per character
    best_val_loss: float
    is_best: bool
    train_loss: float  # mean training loss since the previous evaluation
    seconds: float
    val_bpb: float | None = None  # bits per UTF-8 byte (equal to bits/char on ASCII text)
    # train.ema: the same scores of the weights' moving average (None with it off); `weights` says which of the
    # two scored lower here (model or ema): a new best saves those as best.safetensors
    ema_val_loss: float | None = None
    ema_val_bpc: float | None = None
    ema_val_bpb: float | None = None
    weights: str = "model"


@dataclass(frozen=True)
class Health(Event):
    """Per-layer signals every health interval. Lists are aligned with `layers`."""

    kind: ClassVar[str] = "health"
    step: int
    layers: list[str]
    grad_norm: list[float]
    weight_norm: list[float]
    update_ratio: list[float]  # log10 ||dw|| / ||w||
    adam_m_norm: list[float] = field(default_factory=list)
    adam_v_norm: list[float] = field(default_factory=list)
    adam_snr: list[float] = field(default_factory=list)  # mean |m| / sqrt(v)
    blocks: list[str] = field(default_factory=list)
    act_mean: list[float] = field(default_factory=list)
    act_std: list[float] = field(default_factory=list)
    act_max: list[float] = field(default_factory=list)
    mlp_std: list[float] = field(default_factory=list)
    dead_fraction: list[float | None] = field(default_factory=list)
    attn_entropy: list[float] = field(default_factory=list)
    seconds: float = 0.0
    attn_max_logit: list[float] = field(default_factory=list)  # largest pre-softmax attention logit per block
    log_z: float | None = None  # mean log-partition of the output logits (z-loss's quantity)
    grad_rms: list[float] = field(default_factory=list)  # per layer, gradient RMS (against the optimizer's eps)

    def block_stats(self, i: int) -> tuple[float | None, float]:
        """Block i's dead fraction (None outside the ReLU family) and attention entropy (nan when not measured):
        the two lists an older metrics.jsonl or a non-ReLU model may leave short."""
        dead = self.dead_fraction[i] if i < len(self.dead_fraction) else None
        entropy = self.attn_entropy[i] if i < len(self.attn_entropy) else math.nan
        return dead, entropy

    def block_cells(self, i: int, number: str, percent: str, with_max: bool = False) -> list[str]:
        """Block i's row as text: name, output std (and max |a|), MLP hidden std, dead fraction, attention
        entropy; `number` and `percent` are format specs (the report is wider than the dashboard's table)."""
        dead, entropy = self.block_stats(i)
        stats = [self.act_std[i], *([self.act_max[i]] if with_max else []), self.mlp_std[i]]
        dead_text = "-" if dead is None else format(dead, percent)
        return [self.blocks[i], *(format(x, number) for x in stats), dead_text, f"{entropy:.2f}"]


@dataclass(frozen=True)
class Alert(Event):
    kind: ClassVar[str] = "alert"
    step: int
    code: str  # nonfinite | exploding | vanishing | update_ratio | loss_spike | dead_units | overfitting |
    # init_loss | grad_eps | attn_logit | entropy_collapse | logz_drift | rewind
    severity: str  # warn | bad
    message: str
    layer: str | None = None
    value: float | None = None
    remedy: str = ""  # one line: what to try
    panel: str = ""  # where the dashboard shows it ("page › panel")


@dataclass(frozen=True)
class Rewind(Event):
    """health.on_spike = rewind: the state of `to_step` restored after a bad `step`, whose batches (those of steps
    to_step + 1 .. step) are skipped; the next step is to_step + 1 again, on the batch after the bad one."""

    kind: ClassVar[str] = "rewind"
    step: int  # the bad step
    to_step: int  # the step of the state restored
    skipped_batches: int  # step - to_step
    cause: str  # loss_spike | nonfinite
    in_a_row: int  # rewinds since the last new good state; training stops after MAX_REWINDS
    message: str = ""


@dataclass(frozen=True)
class Sample(Event):
    kind: ClassVar[str] = "sample"
    step: int
    prompt: str
    text: str


@dataclass(frozen=True)
class CheckpointSaved(Event):
    kind: ClassVar[str] = "checkpoint"
    step: int
    path: str
    reason: str  # interval | best | end | stop | request


@dataclass(frozen=True)
class Status(Event):
    """Training state changes: running, paused, evaluating, saving, stopping."""

    kind: ClassVar[str] = "status"
    step: int
    state: str


@dataclass(frozen=True)
class Log(Event):
    kind: ClassVar[str] = "log"
    step: int
    message: str
    level: str = "info"


@dataclass(frozen=True)
class Finished(Event):
    kind: ClassVar[str] = "finished"
    step: int
    reason: str  # max_steps | max_tokens | epochs | time | early_stop | target | stopped | interrupted | nonfinite
    status: str  # completed | stopped | diverged
    elapsed: float
    tokens: int
    best_val_loss: float | None
    best_val_bpc: float | None
    last_val_loss: float | None
    last_val_bpc: float | None
    tokens_per_s: float
    last_checkpoint: str | None
    best_checkpoint: str | None
    peak_memory_mb: float | None = None
    mfu: float | None = None  # at tokens_per_s
    # seconds of this session that tokens_per_s leaves out: evaluations (with their samples), checkpoints, and
    # torch.compile's first step
    eval_seconds: float = 0.0
    checkpoint_seconds: float = 0.0
    compile_seconds: float = 0.0
    best_weights: str = "model"  # what best.safetensors holds: model, or ema (train.ema)
    target: str | None = None  # train.target, e.g. "2.2" (val bits/char) or "loss=1.5"
    # where the target was first reached: step, tokens, seconds (training), flops, score; None: not reached
    target_reached: dict | None = None


@dataclass(frozen=True)
class Failed(Event):
    kind: ClassVar[str] = "failed"
    step: int
    error: str
    traceback: str = ""


EVENT_TYPES: dict[str, type[Event]] = {
    cls.kind: cls
    for cls in (RunStarted, Step, Eval, Health, Alert, Rewind, Sample, CheckpointSaved, Status, Log, Finished, Failed)
}


def from_dict(data: dict[str, Any]) -> Event | None:
    """Rebuild an event from its JSON form; None for unknown kinds (a newer tuilm wrote them)."""
    cls = EVENT_TYPES.get(data.get("event", ""))
    if cls is None:
        return None
    names = {f.name for f in fields(cls)}
    return cls(**{k: _restore(v) for k, v in data.items() if k in names})


def _finite(value: Any) -> Any:
    # JSON has no NaN/Infinity; strings keep them readable and round-trip through _restore.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def _restore(value: Any) -> Any:
    if value in ("nan", "inf", "-inf"):
        return float(value)
    if isinstance(value, list):
        return [_restore(v) for v in value]
    return value


Subscriber = Callable[[Event], None]


class EventBus:
    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self._lock = threading.Lock()

    def subscribe(self, subscriber: Subscriber) -> Subscriber:
        with self._lock:
            self._subscribers.append(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        with self._lock:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

    def emit(self, event: Event) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
            subscriber(event)
