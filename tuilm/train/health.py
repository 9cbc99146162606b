"""Gradient health: the signals that say whether training is working, and alerts when it is not.

Every step costs almost nothing here: the loss and the global gradient norm (which clipping computes anyway)
feed running averages for the exploding and spike alerts. Every `interval` steps the monitor also measures, per
layer group (embedding; each block's attention, MLP and norms; final norm; head):
- gradient and weight L2 norms, and the update/weight ratio ||dw|| / ||w|| of the step just taken (log10;
  healthy is near -3),
- Adam's first and second moments and their signal-to-noise |m| / sqrt(v),
- activation statistics of each block's output and MLP hidden layer (forward hooks), with the fraction of dead
  ReLU units,
- attention entropy per layer on a small sub-batch (the fused attention kernel returns no weights).
Layer groups come from tuilm.train.layer_groups, activation statistics from tuilm.train.activations; a layer's
gradient and update ratio are judged by tuilm.train.verdict, as the dashboard judges them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch

from tuilm.train import events as ev
from tuilm.train.activations import ActivationHooks
from tuilm.train.layer_groups import LayerGroups
from tuilm.train.remedies import REMEDIES
from tuilm.train.verdict import judge_layers

MIN_HISTORY = 5  # steps of running averages before a value can be called abnormal relative to them
REPEAT_AFTER = 100  # steps before the same alert (code, layer) may fire again
ENTROPY_ROWS = 4


def nonfinite_action(policy: str, skips: int, max_skips: int) -> tuple[str, bool]:
    """What a non-finite step leads to under health.nonfinite `policy` after `skips` of them in a row: the words
    for the alert, and whether training stops."""
    if policy == "stop":
        return "training stopped", True
    if policy == "rewind":  # health.on_spike = rewind: tuilm/train/rewind.py bounds it
        return "rewinding to the last good state", False
    if skips >= max_skips:
        return f"{skips} steps in a row were skipped, training stopped", True
    return "step skipped", False


def first_nonfinite(model, forward: Callable[[], object] | None = None) -> str | None:
    """Where NaN/Inf starts: a weight; else (given a forward pass to rerun) the first module whose output
    is not finite; else the gradient nearest the loss (a NaN gradient spreads towards the input)."""
    named = list(model.named_parameters())
    for name, p in named:
        if not torch.isfinite(p).all():
            return f"{name} (weights)"
    if forward is not None:
        found: list[str] = []

        def make_hook(module_name):
            def hook(module, inputs, output):
                if not found and isinstance(output, torch.Tensor) and not torch.isfinite(output).all():
                    found.append(module_name)

            return hook

        leaves = [(n, m) for n, m in model.named_modules() if n and not any(m.children())]
        handles = [m.register_forward_hook(make_hook(n)) for n, m in leaves]
        try:
            with torch.no_grad():
                forward()
        finally:
            for h in handles:
                h.remove()
        if found:
            return f"{found[0]} (output)"
    for name, p in reversed(named):
        if p.grad is not None and not torch.isfinite(p.grad).all():
            return name
    return None


def optimizer_moments(params: list, optimizer) -> tuple[torch.Tensor, ...] | None:
    """Per parameter: the norms of its moments (Adam's m and v; the momentum buffer of Muon and SGD, with v 0),
    the sum of its element-wise |m| / sqrt(v) where there is a v, and its count of elements with a v; None for
    an optimizer without moments."""
    n = len(params)
    m, v, snr, count = torch.zeros(n), torch.zeros(n), torch.zeros(n), torch.zeros(n)
    betas = {id(p): g.get("betas", (0.9, 0.999)) for g in optimizer.param_groups for p in g["params"]}
    adam, momentum = [], []  # (index, state) of parameters with both of Adam's moments / a momentum buffer
    for i, p in enumerate(params):
        state = optimizer.state.get(p, {})
        if "exp_avg" in state and "exp_avg_sq" in state:
            adam.append((i, state))
        elif state.get("momentum_buffer") is not None:  # Muon, SGD: no 2nd moment
            momentum.append((i, state))
    found = bool(adam or momentum)
    with torch.no_grad():  # one foreach call per quantity, not a loop of small ops per parameter
        if adam:
            index = [i for i, _ in adam]
            ma = [st["exp_avg"].float() for _, st in adam]
            va = [st["exp_avg_sq"].float() for _, st in adam]
            m[index] = torch.stack(torch._foreach_norm(ma)).cpu()
            v[index] = torch.stack(torch._foreach_norm(va)).cpu()
            # The signal-to-noise of what Adam applies: bias-corrected moments, as in its update.
            ratios = torch._foreach_div(torch._foreach_abs(ma), torch._foreach_add(torch._foreach_sqrt(va), 1e-12))
            scales = []
            for i, st in adam:
                t = float(st.get("step", 1))
                b1, b2 = betas[id(params[i])]
                scales.append(math.sqrt(1 - b2**t) / (1 - b1**t))
            snr[index] = torch.stack([r.sum() for r in ratios]).cpu() * torch.tensor(scales)
            count[index] = torch.tensor([float(a.numel()) for a in ma])
        if momentum:
            buffers = [st["momentum_buffer"].float() for _, st in momentum]
            m[[i for i, _ in momentum]] = torch.stack(torch._foreach_norm(buffers)).cpu()
    return (m, v, snr, count) if found else None


def optimizer_eps(optimizer) -> float:
    """The optimizer's eps (Adam-like: its first group's), 0 for optimizers without one."""
    groups = getattr(optimizer, "param_groups", [])
    eps = groups[0].get("eps", 0.0) if groups else 0.0
    return float(eps) if isinstance(eps, int | float) else 0.0


class HealthMonitor:
    def __init__(
        self,
        model,
        optimizer,
        cfg,
        emit: Callable[[ev.Event], None],
        warmup_steps: int = 0,
        init_vocab: int | None = None,
    ):
        """`cfg` is a HealthConfig; `emit` publishes Health and Alert events; `init_vocab`: the vocabulary of a
        model trained from scratch, whose first loss should be near ln(vocab) (None: not checked)."""
        self.init_vocab = init_vocab
        self._logz_first: float | None = None
        self.model, self.optimizer, self.cfg, self.emit = model, optimizer, cfg, emit
        self.warmup_steps = warmup_steps
        self.names = [n for n, _ in model.named_parameters()]
        self.params = [p for _, p in model.named_parameters()]
        self.group_of = LayerGroups(model)
        self.groups = list(dict.fromkeys(self.group_of(n) for n in self.names))
        index = {g: i for i, g in enumerate(self.groups)}
        self._group_of = torch.tensor([index[self.group_of(n)] for n in self.names], dtype=torch.long)
        self._numel = self._sum_groups(torch.tensor([float(p.numel()) for p in self.params]))
        self.acts = ActivationHooks(self.group_of.blocks, getattr(model, "cfg", None))
        self.grad_ema: float | None = None
        self.loss_ema: float | None = None
        self.seen = 0
        self._last_alert: dict[tuple[str, str | None], int] = {}
        self._evals: list[tuple[float, float]] = []  # (val loss, train loss)
        self._grads: torch.Tensor | None = None
        self._before: list[torch.Tensor] | None = None

    # -- every step -------------------------------------------------------------------------------------------

    def due(self, step: int) -> bool:
        return self.cfg.interval > 0 and step % self.cfg.interval == 0

    def is_spike(self, loss: float) -> bool:
        """`loss` above spike_factor times its running average (once there is enough history to judge)."""
        return self.seen >= MIN_HISTORY and loss > self.cfg.spike_factor * self.loss_ema

    def check_step(self, step: int, loss: float, grad_norm: float) -> bool:
        """The per-step alerts; True when the loss spiked (alerted or not: a repeat may be held back)."""
        c = self.cfg
        spiked = self.is_spike(loss)
        self.seen += 1
        if self.seen == 1 and self.init_vocab and self.init_vocab > 1 and c.init_tolerance > 0:
            expected = math.log(self.init_vocab)
            if abs(loss - expected) > c.init_tolerance * expected:
                message = (
                    f"step {step} loss {loss:.3f} is far from ln(vocab {self.init_vocab}) = {expected:.3f}: "
                    "the init or the data is wrong"
                )
                self._alert(step, "init_loss", "warn", message, None, loss)
        if grad_norm > c.explode_limit:
            message = f"gradient norm {grad_norm:.3g} is above the limit {c.explode_limit:g}"
            self._alert(step, "exploding", "bad", message, None, grad_norm)
        elif self.seen > MIN_HISTORY and grad_norm > c.explode_factor * self.grad_ema:
            message = f"gradient norm {grad_norm:.3g} is {grad_norm / self.grad_ema:.0f}x its running average {self.grad_ema:.3g}"
            self._alert(step, "exploding", "bad", message, None, grad_norm)
        if spiked:
            message = f"loss {loss:.3f} spiked above {c.spike_factor:g}x its running average {self.loss_ema:.3f}"
            self._alert(step, "loss_spike", "warn", message, None, loss)
        # Slow averages (about 50 steps) so that one spike does not hide the next.
        self.grad_ema = grad_norm if self.grad_ema is None else 0.98 * self.grad_ema + 0.02 * min(grad_norm, 1e30)
        self.loss_ema = loss if self.loss_ema is None else 0.98 * self.loss_ema + 0.02 * loss
        return spiked

    def non_finite(self, step: int, loss: float, grad_norm: float, action: str, forward=None) -> None:
        """Alert for a NaN/Inf loss or gradient, naming where it starts (see first_nonfinite)."""
        where = first_nonfinite(self.model, forward if not math.isfinite(loss) else None)
        if not math.isfinite(loss):
            what = f"loss ({loss})"
        elif where:
            what = "gradient"
        else:
            what = f"gradient norm ({grad_norm}: the squares overflow although each value is finite)"
        place = f" in {where}" if where else ""
        layer = self.group_of(where.split(" ")[0]) if where else None
        self._alert(step, "nonfinite", "bad", f"non-finite {what}{place}; {action}", layer, grad_norm)

    # -- every `interval` steps -------------------------------------------------------------------------------

    def activation_hooks(self, active: bool):
        """Collect activation statistics from the forward passes run inside (only the first micro-batch)."""
        return self.acts.during(active)

    def keep_hooks(self) -> None:
        """Leave the activation hooks in place, recording after `arm()` (for tuilm.Monitor: ActivationHooks.keep)."""
        self.acts.keep()

    def arm(self) -> None:
        self.acts.arm()

    def remove_hooks(self) -> None:
        self.acts.remove()

    def record_grads(self) -> None:
        """Per-group gradient norms, before clipping changes them."""
        norms = torch.zeros(len(self.params))
        have = [(i, p.grad) for i, p in enumerate(self.params) if p.grad is not None]
        if have:
            values = torch._foreach_norm([g.float() for _, g in have])
            norms[[i for i, _ in have]] = torch.stack(values).float().cpu()
        self._grads = self._by_group(norms)

    def snapshot(self) -> None:
        self._before = [p.detach().clone() for p in self.params]

    def measure(self, step: int, batch=None, to_tensors=None, log_z=None, attn_entropy=None) -> None:
        """After the optimizer step: update ratios, weights, moments, activations, entropy (for a model with
        `attention_stats`, given the step's batch); then alerts. Another model's loop may pass what it measured
        itself: the output logits' mean log Z and each layer's mean attention entropy (tuilm.Monitor does)."""
        import time

        t0 = time.perf_counter()
        if self._before is None or self._grads is None:
            return
        with torch.no_grad():
            weights = torch.stack(torch._foreach_norm([p.detach().float() for p in self.params])).cpu()
            deltas = torch._foreach_sub([p.detach() for p in self.params], self._before)
            updates = torch.stack(torch._foreach_norm([d.float() for d in deltas])).cpu()
        self._before = None
        w = self._by_group(weights)
        u = self._by_group(updates)
        ratio = torch.log10(u / w.clamp_min(1e-12)).clamp_min(-12.0)
        m_norm, v_norm, snr = self._moments()
        blocks = [f"block{i}" for i in range(len(self.group_of.blocks))]
        entropy: list[float] = list(attn_entropy or [])
        max_logit: list[float] = []
        if batch is not None and to_tensors is not None and hasattr(self.model, "attention_stats"):
            x, _, pos, doc = to_tensors(batch)
            rows = slice(0, ENTROPY_ROWS)
            stats = self.model.attention_stats(
                x[rows], None if pos is None else pos[rows], None if doc is None else doc[rows]
            )
            entropy, max_logit = stats["entropy"].tolist(), stats["max_logit"].tolist()
            log_z = float(stats["log_z"])
        rms = (self._grads / self._numel.clamp_min(1).sqrt()).tolist()
        event = ev.Health(
            step=step,
            layers=self.groups,
            grad_norm=self._grads.tolist(),
            weight_norm=w.tolist(),
            update_ratio=ratio.tolist(),
            adam_m_norm=m_norm,
            adam_v_norm=v_norm,
            adam_snr=snr,
            blocks=blocks,
            **self.acts.take(blocks),
            attn_entropy=entropy,
            seconds=time.perf_counter() - t0,
            attn_max_logit=max_logit,
            log_z=log_z,
            grad_rms=rms,
        )
        self._grads = None
        self.emit(event)
        self.layer_alerts(event)

    def _moments(self) -> tuple[list[float], list[float], list[float]]:
        """Norms of the moments per group, and the mean element-wise |m| / sqrt(v) where there is a v (nan
        elsewhere; all empty for optimizers without moments)."""
        found = optimizer_moments(self.params, self.optimizer)
        if found is None:
            return [], [], []
        m, v, snr, count = found
        counts = self._sum_groups(count)
        snr_group = torch.where(counts > 0, self._sum_groups(snr) / counts.clamp_min(1), math.nan)
        return self._by_group(m).tolist(), self._by_group(v).tolist(), snr_group.tolist()

    def _sum_groups(self, values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(self.groups)).index_add_(0, self._group_of, values)

    def _by_group(self, norms: torch.Tensor) -> torch.Tensor:
        """Combine per-parameter L2 norms into per-group L2 norms."""
        return self._sum_groups(norms.float() ** 2).sqrt()

    def layer_alerts(self, h: ev.Health) -> None:
        """The alerts of one measurement (per layer, per block, and log Z)."""
        c = self.cfg
        # The dashboard colours each layer by the same verdicts (tuilm.train.verdict), so they cannot disagree.
        for v, g, r in zip(judge_layers(h, c, self.warmup_steps), h.grad_norm, h.update_ratio, strict=True):
            if v.grad.alert:
                message = f"{v.layer} gradient norm {g:.2g} is {v.grad.rule}"
                self._alert(h.step, v.grad.alert, v.grad.level, message, v.layer, g)
            if v.update.alert:
                message = f"{v.layer} update/weight ratio 10^{r:.1f} is {v.update.rule}"
                self._alert(h.step, v.update.alert, v.update.level, message, v.layer, r)
        eps = optimizer_eps(self.optimizer)
        if eps and c.eps_ratio > 0:
            for layer, g, rms in zip(h.layers, h.grad_norm, h.grad_rms, strict=False):
                if g >= c.vanish_floor and rms < c.eps_ratio * eps:
                    message = (
                        f"{layer} gradient RMS {rms:.2g} is within {c.eps_ratio:g}x of the optimizer's eps {eps:g}"
                    )
                    self._alert(h.step, "grad_eps", "warn", message, layer, rms)
        for block, top in zip(h.blocks, h.attn_max_logit, strict=False):
            if math.isfinite(top) and top > c.attn_logit_limit:
                message = f"{block} largest attention logit {top:.3g} is above {c.attn_logit_limit:g}"
                self._alert(h.step, "attn_logit", "bad", message, f"{block}.attn", top)
        for block, entropy in zip(h.blocks, h.attn_entropy, strict=False):
            if math.isfinite(entropy) and entropy < c.entropy_floor:
                message = f"{block} attention entropy {entropy:.3f} nats is below {c.entropy_floor:g}: collapsed"
                self._alert(h.step, "entropy_collapse", "bad", message, f"{block}.attn", entropy)
        if h.log_z is not None and math.isfinite(h.log_z):
            if self._logz_first is None:
                self._logz_first = h.log_z
            elif abs(h.log_z - self._logz_first) > c.logz_drift:
                message = f"output log Z {h.log_z:.3g} drifted from {self._logz_first:.3g} at the first measurement"
                self._alert(h.step, "logz_drift", "warn", message, None, h.log_z)
        for block, dead in zip(h.blocks, h.dead_fraction, strict=True):
            if dead is not None and dead > c.dead_limit:
                self._alert(
                    h.step,
                    "dead_units",
                    "warn",
                    f"{block} MLP: {dead:.0%} of ReLU units never fire on this batch",
                    f"{block}.mlp",
                    dead,
                )

    def on_eval(self, step: int, val_loss: float, train_loss: float) -> None:
        """Overfitting: val loss rising for N evaluations in a row while the train loss keeps falling."""
        self._evals.append((val_loss, train_loss))
        n = self.cfg.overfit_evals
        recent = self._evals[-(n + 1) :]
        if n and len(recent) == n + 1:
            val_up = all(b[0] > a[0] for a, b in itertools.pairwise(recent))
            train_down = all(b[1] < a[1] for a, b in itertools.pairwise(recent) if math.isfinite(b[1]))
            if val_up and train_down:
                self._alert(
                    step,
                    "overfitting",
                    "warn",
                    f"val loss rose {n} evaluations in a row ({recent[0][0]:.3f} -> {val_loss:.3f}) while train loss fell",
                    None,
                    val_loss,
                )

    def _alert(self, step: int, code: str, severity: str, message: str, layer: str | None, value: float) -> None:
        key = (code, layer)
        last = self._last_alert.get(key)
        if last is not None and step - last < REPEAT_AFTER:
            return
        self._last_alert[key] = step
        remedy, panel = REMEDIES.get(code, ("", ""))
        self.emit(ev.Alert(step, code, severity, message, layer, float(value), remedy, panel))

    # -- resume -------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "grad_ema": self.grad_ema,
            "loss_ema": self.loss_ema,
            "seen": self.seen,
            "evals": self._evals,
            "logz_first": self._logz_first,
        }

    def load_state_dict(self, state: dict) -> None:
        self.grad_ema = state.get("grad_ema")
        self.loss_ema = state.get("loss_ema")
        self.seen = state.get("seen", 0)
        self._evals = [tuple(e) for e in state.get("evals", [])]
        self._logz_first = state.get("logz_first")
