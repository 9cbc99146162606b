"""The one health verdict (tuilm.train.verdict): its rule, and the monitor's alerts, the dashboard's alert
highlights and its per-layer colours agreeing on the same numbers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.helpers import replayed
from tuilm.config import HealthConfig
from tuilm.train import events as ev
from tuilm.train.health import HealthMonitor
from tuilm.train.verdict import grad_median, grad_verdict, judge_layers, update_verdict
from tuilm.tui.alerts import AlertHighlights
from tuilm.tui.app import Dashboard
from tuilm.tui.health_panels import GradNorm, LayerBars

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


def test_the_judging_rule_follows_the_thresholds():
    limits = HealthConfig()
    assert grad_verdict(1e-3, 1e-3, limits).level == "healthy"
    floor = grad_verdict(1e-9, 1e-3, limits)  # below the floor
    assert (floor.level, floor.alert, floor.rule) == ("bad", "vanishing", "below 1e-08")
    relative = grad_verdict(5e-5, 1.0, limits)  # below vanish_ratio of the median: the monitor's warning
    assert (relative.level, relative.alert, relative.rule) == ("warn", "vanishing", "20000x below the median layer's")
    near = grad_verdict(5e-3, 1.0, limits)  # within 100x of vanishing relative to the median: no alert yet
    assert (near.level, near.alert) == ("warn", None) and "within 100x" in near.rule
    assert grad_verdict(1e-7, 1e-7, limits).level == "warn"  # within 100x of the floor
    assert grad_verdict(math.nan, 1.0, limits).level == "bad" and grad_verdict(1e5, 1.0, limits).level == "bad"
    assert grad_verdict(math.inf, 1.0, limits).alert is None  # the step's own alerts name it
    assert update_verdict(-3.0, limits).level == "healthy"
    near_band = update_verdict(-4.5, limits)  # inside the band, within a decade of its edge: no alert yet
    assert (near_band.level, near_band.alert, near_band.rule) == ("warn", None, "near the band's edge -5")
    below = update_verdict(-6.0, limits)  # outside the band: the monitor's update_ratio warning
    assert (below.level, below.alert) == ("warn", "update_ratio") and "barely moves" in below.rule
    assert (update_verdict(math.nan, limits).level, update_verdict(math.nan, limits).alert) == ("bad", "update_ratio")
    assert update_verdict(-6.5, HealthConfig.of_run({"health": {"update_low": -7.0}})).level == "warn"
    assert update_verdict(-6.5, HealthConfig.of_run({"health": {"update_low": -7.0}})).alert is None


def test_the_median_layer_is_the_median_of_the_finite_norms():
    assert grad_median([math.nan, 1.0, 2.0, 3.0, math.inf, math.inf]) == 2.0
    assert grad_median([4.0, 1.0]) == 4.0  # the upper median of an even count
    assert grad_median([math.nan]) == grad_median([]) == 0.0
    # Over all values the two infinities (and where NaN happens to sort) would make it 5e-5 here, and the layer
    # at 5e-5 would not be vanishing any more.
    norms = [1.0, 2.0, math.nan, 5e-5, 1e-9, 3.0, 5e-3, math.inf]
    assert grad_median(norms) == 1.0


def test_warmup_and_a_vanished_gradient_hold_back_the_update_alert_but_not_its_colour():
    h = ev.Health(step=10, layers=["a", "b"], grad_norm=[1.0, 1e-9], weight_norm=[1.0, 1.0], update_ratio=[-6.0, -6.0])
    during, after = judge_layers(h, HealthConfig(), warmup_steps=10), judge_layers(h, HealthConfig(), warmup_steps=9)
    assert [v.update.level for v in during] == [v.update.level for v in after] == ["warn", "warn"]
    assert [v.update.alert for v in during] == [None, None]
    assert [v.update.alert for v in after] == ["update_ratio", None]  # b's own vanishing alert says more


# One measurement with every case side by side: healthy, near the band's top (the issue's -1.84), a NaN and an
# infinite gradient, relative and absolute vanishing, out of the band, a non-finite update ratio.
CASES = {
    # layer: (grad norm, log10 update ratio, expected grad level, expected update level)
    "embedding": (1.0, -3.0, "healthy", "healthy"),
    "block0.attn": (2.0, -1.84, "healthy", "warn"),
    "block0.mlp": (math.nan, -3.0, "bad", "healthy"),
    "block1.attn": (5e-5, -3.0, "warn", "healthy"),
    "block1.mlp": (1e-9, -6.0, "bad", "warn"),
    "block2.attn": (math.inf, -3.0, "bad", "healthy"),
    "head": (3.0, -6.0, "healthy", "warn"),
    "norm_f": (5e-3, math.nan, "warn", "bad"),
}
# What the monitor alerts on among them: (layer, code, severity).
ALERTS = {
    ("block1.attn", "vanishing", "warn"),
    ("block1.mlp", "vanishing", "bad"),
    ("head", "update_ratio", "warn"),
    ("norm_f", "update_ratio", "bad"),
}


def measurement(step: int = 50) -> ev.Health:
    layers = list(CASES)
    grads, ratios = [CASES[n][0] for n in layers], [CASES[n][1] for n in layers]
    return ev.Health(step=step, layers=layers, grad_norm=grads, weight_norm=[1.0] * len(layers), update_ratio=ratios)


def monitor_alerts(h: ev.Health) -> list[ev.Alert]:
    alerts: list[ev.Alert] = []
    model = torch.nn.Module()
    model.cfg = type("Cfg", (), {"act": "gelu"})()
    HealthMonitor(model, None, HealthConfig(), alerts.append).layer_alerts(h)
    return alerts


def bar_levels(bars: LayerBars) -> dict[str, tuple[str, str]]:
    """Each layer's (grad bar, ratio bar) level, read back from the styles of the text the widget draws."""
    level_of = {bars.get_component_rich_style(f"layer-bars--{k}"): k for k in ("healthy", "warn", "bad")}
    assert len(level_of) == 3  # three distinct styles, or the colours could not tell the levels apart
    rows = bars.render().split("\n")[1:]
    levels = {}
    for name, row in zip(bars.health.layers, rows, strict=True):
        grad_bar, ratio_bar = [level_of[s.style] for s in row.spans if s.style in level_of][-2:]
        levels[name] = (grad_bar, ratio_bar)
    return levels


async def test_the_monitor_the_alerts_and_the_widget_give_the_same_verdict():
    h = measurement()
    alerts = monitor_alerts(h)
    assert {(a.layer, a.code, a.severity) for a in alerts} == ALERTS
    assert next(a for a in alerts if a.layer == "head").message.endswith("is below the band: the layer barely moves")

    highlights = AlertHighlights()
    for a in alerts:
        highlights.add(a)
    now = highlights.at(h.step)
    assert now.layers == {layer for layer, _, _ in ALERTS}  # the layers the widget marks
    assert now.pages == {"health": "bad"}

    app = Dashboard(store=replayed(upto=120))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("2")
        bars = app.query_one(LayerBars)
        bars.health = h
        await pilot.pause()
        shown = bar_levels(bars)
    assert shown == {name: (grad, update) for name, (_, _, grad, update) in CASES.items()}
    # Every alert's severity is the colour of the bar it is about.
    for a in alerts:
        assert shown[a.layer][0 if a.code == "vanishing" else 1] == a.severity


async def test_the_worst_layer_line_says_which_rule_a_warning_means():
    h = ev.Health(
        step=50, layers=["block0.attn", "block0.mlp"], grad_norm=[1.0, 1.0], weight_norm=[1.0, 1.0],
        update_ratio=[-1.84, -3.0],
    )  # fmt: skip
    app = Dashboard(store=replayed(upto=120))
    async with app.run_test(size=(160, 48)) as pilot:
        grad = app.query_one(GradNorm)
        grad.show_worst(h)
        await pilot.pause()
        line = str(app.query_one("#grad-worst").render())
    assert "block0.attn" in line and "-1.84 warn: near the band's edge -1" in line
    assert "(band -5..-1, step 50)" in line


# A sample value for each row of docs/health.md's table (by the start of its first cell), judged against a median
# layer of 1.0: the table must say what the code does.
DOC_SAMPLES = {
    "gradient norm not finite": ("grad", math.nan),
    "gradient norm below `health.vanish_floor`": ("grad", 1e-9),
    "gradient norm below `health.vanish_ratio`": ("grad", 5e-5),
    "gradient norm above": ("grad", 1e5),
    "gradient norm within 100x": ("grad", 5e-3),
    "log10 update/weight ratio not finite": ("update", math.nan),
    "ratio outside the band": ("update", -6.0),
    "ratio inside the band": ("update", -1.84),
}


def test_the_table_in_docs_health_md_states_the_rule():
    text = (Path(__file__).resolve().parent.parent / "docs" / "health.md").read_text(encoding="utf-8")
    rows = [line.split("|")[1:4] for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    rows = [[cell.strip() for cell in row] for row in rows if row[0].strip() != "a layer's"]
    assert len(rows) == len(DOC_SAMPLES)
    for case, level, alert in rows:
        kind, value = next(sample for start, sample in DOC_SAMPLES.items() if case.startswith(start))
        v = grad_verdict(value, 1.0, HealthConfig()) if kind == "grad" else update_verdict(value, HealthConfig())
        assert v.level == level, case
        assert v.alert == (None if alert.startswith("none") else alert.strip("`")), case
