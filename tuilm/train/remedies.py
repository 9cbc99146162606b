"""Every alert's one-line remedy and the dashboard panel that shows it (page › panel): the text an alert carries
to the dashboard, the progress line and `tuilm health`, set where the alert is raised (health, rewind) and where
a run's end is explained (run setup)."""

from __future__ import annotations

REMEDIES: dict[str, tuple[str, str]] = {
    "nonfinite": ("lower lr, keep grad_clip on, use bf16 not fp16; rewind past a bad batch", "1 train › loss"),
    "exploding": (
        "lower lr or grad_clip; lengthen warmup; try model.qk_norm / train.z_loss",
        "2 health › gradient norm",
    ),
    "vanishing": ("check the layer is used and its init; raise lr for it or use pre-norm", "2 health › layers"),
    "update_ratio": ("too small: raise lr; too large: lower lr or lengthen warmup", "2 health › layers"),
    "loss_spike": ("lower lr, lengthen warmup, or skip the batch (health.on_spike)", "1 train › loss"),
    "rewind": ("one bad batch was skipped; if rewinds repeat, lower lr or lengthen warmup", "1 train › loss"),
    "dead_units": ("lower lr, use gelu or swiglu instead of relu", "2 health › activations"),
    "overfitting": ("more data, dropout or weight decay; stop early (train.patience)", "1 train › loss"),
    "init_loss": (
        "at init the loss should be near ln(vocab): check the output init, labels and shift",
        "1 train › loss",
    ),
    "grad_eps": ("gradients near Adam's eps stop moving it: lower eps or scale the loss up", "2 health › layers"),
    "attn_logit": ("attention logits grow unbounded: lower lr, turn on model.qk_norm", "2 health › activations"),
    "entropy_collapse": (
        "attention collapsed onto one key: model.qk_norm, lower lr, longer warmup",
        "2 health › activations",
    ),
    "logz_drift": ("output log Z drifts: add train.z_loss (1e-4) or lower lr", "2 health › activations"),
}
