"""Which panels an alert highlights, and for how long: a pure rule, kept apart from the widgets it colours."""

from __future__ import annotations

from dataclasses import dataclass, field

from tuilm.train import events as ev

ALERT_STEPS = 100  # a panel stays highlighted this many steps after an alert about it (the monitor's repeat gap)

# Which panels an alert concerns, by its code; an alert naming a layer also concerns the per-layer panels.
ALERT_PANELS = {
    "nonfinite": ("grad",),
    "exploding": ("grad",),
    "vanishing": ("layers", "heatmap"),
    "update_ratio": ("layers",),
    "loss_spike": ("loss",),
    "overfitting": ("val",),
    "dead_units": ("acts",),
}
PAGE_OF = {
    "loss": "train",
    "val": "train",
    "speed": "train",
    "lr": "train",
    "grad": "train",
    "layers": "health",
    "heatmap": "health",
    "acts": "health",
}


@dataclass(frozen=True)
class Highlight:
    panels: dict[str, str]  # panel -> severity ("bad" or "warn") of its latest recent alert
    pages: dict[str, str]  # page -> the worst severity among its panels
    layers: frozenset[str]  # layers named by a recent alert


@dataclass
class AlertHighlights:
    """Alerts in, what to highlight at a step out: a panel (and its page's tab) for ALERT_STEPS steps after an
    alert about it, and the layers an alert named."""

    steps: int = ALERT_STEPS
    _panels: dict[str, tuple[int, str]] = field(default_factory=dict)  # panel -> (step, severity) of its latest
    _layers: dict[str, int] = field(default_factory=dict)  # layer -> step of its latest alert

    def add(self, alert: ev.Alert) -> None:
        panels = ALERT_PANELS.get(alert.code, ())
        if alert.layer:
            panels = (*panels, "layers", "heatmap")
            self._layers[alert.layer] = alert.step
        for panel in panels:
            self._panels[panel] = (alert.step, alert.severity)

    def at(self, step: int) -> Highlight:
        panels = {panel: severity for panel, (at, severity) in self._panels.items() if step - at < self.steps}
        pages: dict[str, str] = {}
        for panel, page in PAGE_OF.items():
            severity = panels.get(panel)
            if severity and pages.get(page) != "bad":
                pages[page] = severity
        self._layers = {layer: at for layer, at in self._layers.items() if step - at < self.steps}
        return Highlight(panels, pages, frozenset(self._layers))

    def clear(self) -> None:
        self._panels.clear()
        self._layers.clear()
