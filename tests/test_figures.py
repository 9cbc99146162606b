"""Figures people compare (issue 16, section 4): MFU beside tokens/s, bits per UTF-8 byte beside bits per character,
the dashboard's system panel and its smoothed loss."""

from __future__ import annotations

import json
import math
import sys
import time
import types
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests.events_factory import make_step
from tests.helpers import tiny_trainer
from tuilm.cli import app as cli
from tuilm.data.pipeline import tokenize, utf8_size
from tuilm.flops import Flops, _cpu_peak, cpu_peak, flops_per_token, gpu_peak, model_flops_per_token
from tuilm.model import GPT
from tuilm.model.config import ModelConfig
from tuilm.sysinfo import GPU_EXTRA, SystemProbe
from tuilm.train import events as ev
from tuilm.tui.app import Dashboard
from tuilm.tui.source import Recorded
from tuilm.tui.store import RunStore, debiased_ema
from tuilm.tui.system import NOT_SAMPLED, system_lines

pytestmark = pytest.mark.anyio

NON_ASCII = "\n\n".join(f"ГОВОРЯЩИЙ {i}:\nслово{i % 7} café 東京 naïve" for i in range(40))


@pytest.fixture
def anyio_backend():
    return "asyncio"


# -- MFU ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tie", [True, False])
def test_flops_per_token_of_a_known_shape(tie):
    L, d, V, T = 4, 64, 500, 32
    with torch.device("meta"):  # the shape is all that counts: no memory, no initialisation
        model = GPT(ModelConfig(vocab_size=V, seq_len=T, d_model=d, n_layers=L, n_heads=4, tie_embeddings=tie))
    # By hand: per block q, k, v and the output projection (4 d²) and a 4x MLP (8 d²), plus the output head;
    # attention scores and the weighted sum add 12·L·d·T. The norms' few weights are the only difference.
    by_hand = 6 * (L * 12 * d * d + d * V) + 12 * L * d * T
    counted = model_flops_per_token(model)
    assert by_hand <= counted < 1.01 * by_hand  # tied or not, the head's matmul counts once
    assert counted == flops_per_token(model.num_params(embeddings=False) + d * V, L, d, T)


def test_gpu_peaks_match_device_names_and_unknown_ones_stay_unknown():
    assert gpu_peak("NVIDIA H100 80GB HBM3") == 989e12
    assert gpu_peak("NVIDIA H100 PCIe") < gpu_peak("NVIDIA H100 80GB HBM3")
    assert gpu_peak("NVIDIA H200") == 989e12
    assert gpu_peak("NVIDIA A100-SXM4-40GB") == 312e12
    assert gpu_peak("NVIDIA L4") == 121e12 and gpu_peak("NVIDIA L40S") == 362e12
    assert gpu_peak("NVIDIA GeForce RTX 4090") == 165e12
    assert gpu_peak("NVIDIA A10G") is None  # not taken for an A10
    assert gpu_peak("Imaginary Accelerator 9000") is None
    assert Flops(10**9, None).mfu(1e4) is None  # no peak, no guess
    assert Flops(10**9, 1e13).mfu(1e3) == pytest.approx(0.1)


def test_the_cpu_peak_is_measured_once_per_process():
    first = cpu_peak()
    assert math.isfinite(first) and first > 1e6  # any CPU of this century does a million FLOP/s
    hits = _cpu_peak.cache_info().hits
    assert cpu_peak() == first and _cpu_peak.cache_info().hits == hits + 1  # the cached value, not a new one


def test_steps_and_the_end_carry_mfu(small_corpus, tmp_path):
    trainer, rec = tiny_trainer(small_corpus, tmp_path / "run", "max_steps=3", "sample_tokens=0")
    trainer.run()
    [started] = rec.of(ev.RunStarted)
    assert started.flops_per_token == model_flops_per_token(trainer.model) and started.peak_flops > 0
    for step in rec.of(ev.Step):
        assert step.mfu == pytest.approx(step.tokens_per_s * started.flops_per_token / started.peak_flops)
    [end] = rec.of(ev.Finished)
    assert end.mfu == pytest.approx(end.tokens_per_s * started.flops_per_token / started.peak_flops)


# -- bits per byte ------------------------------------------------------------------------------------------------


def test_bytes_and_characters_differ_on_non_ascii_text():
    texts = ["héllo", "東京", "plain"]
    docs = tokenize([[5, 6], [7], [8, 9]], texts, eos_id=1)
    assert docs.chars == 5 + 2 + 5 + 3  # one per document end
    assert docs.utf8_bytes == 6 + 6 + 5 + 3
    assert utf8_size(["a\udcff"]) == 2  # an undecodable byte passed through as an escape is one byte again


def test_eval_reports_bits_per_byte_beside_bits_per_char(tmp_path):
    corpus = tmp_path / "ru.txt"
    corpus.write_text(NON_ASCII, encoding="utf-8")
    trainer, rec = tiny_trainer(corpus, tmp_path / "run", "max_steps=2", "sample_tokens=0", "eval_interval=2")
    trainer.run()
    val = trainer.dataset.val
    assert val.utf8_bytes > val.chars  # Cyrillic and kanji take two and three bytes
    for e in rec.of(ev.Eval):
        # The same nats over more bytes than characters.
        assert e.val_bpb == pytest.approx(e.val_bpc * val.chars / val.utf8_bytes)
        assert e.val_bpb < e.val_bpc


def test_tuilm_eval_gives_bits_per_byte_of_a_non_ascii_text(trained_run, tmp_path):
    path = tmp_path / "ru.txt"
    path.write_text(NON_ASCII, encoding="utf-8")
    result = CliRunner().invoke(cli, ["eval", "-m", str(trained_run), "--data", str(path), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["bytes"] > doc["characters"]
    assert doc["bits_per_byte"] == pytest.approx(doc["bits_per_char"] * doc["characters"] / doc["bytes"])
    table = CliRunner().invoke(cli, ["eval", "-m", str(trained_run), "--data", str(path)]).stdout
    assert "bits/char" in table and "bits/byte" in table and f"{doc['bytes']:,}" in table


# -- the system panel ---------------------------------------------------------------------------------------------


class FakeNvml(types.ModuleType):
    """What tuilm reads of pynvml, answering for one GPU."""

    class NVMLError(Exception):
        pass

    def __init__(self):
        super().__init__("pynvml")

    def nvmlInit(self):
        pass

    def nvmlDeviceGetHandleByIndex(self, index):
        return ("gpu", index)

    def nvmlDeviceGetHandleByPciBusId(self, bus_id):
        return ("gpu", bus_id)

    def nvmlDeviceGetName(self, handle):
        return b"Fake GPU 80GB"

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(used=12 * 2**30, total=80 * 2**30)

    def nvmlDeviceGetPowerUsage(self, handle):
        return 350_000  # milliwatts

    def nvmlDeviceGetEnforcedPowerLimit(self, handle):
        return 700_000

    def nvmlDeviceGetUtilizationRates(self, handle):
        return SimpleNamespace(gpu=87)


def test_system_probe_reads_cpu_ram_and_the_gpu_through_nvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml())
    sample = SystemProbe(SimpleNamespace(type="cuda", index=0)).read()
    assert sample.cores >= 1 and 0 < sample.process_rss <= sample.memory_total
    assert sample.gpu.name == "Fake GPU 80GB" and sample.gpu.power_w == 350
    text = system_lines(sample).plain
    assert "CPU  process" in text and "RAM  process" in text
    assert "GPU  Fake GPU 80GB 87% busy · memory 12 GiB/80 GiB · power 350/700 W" in text


def test_without_nvidia_ml_py_the_panel_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    sample = SystemProbe(SimpleNamespace(type="cuda", index=0)).read()
    assert sample.gpu is None and sample.gpu_note == GPU_EXTRA
    assert GPU_EXTRA in system_lines(sample).plain
    assert "GPU" not in system_lines(SystemProbe(torch.device("cpu")).read()).plain  # a CPU run has none


async def test_the_system_panel_samples_a_run_trained_here(monkeypatch):
    app = Dashboard(store=RunStore())
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        assert NOT_SAMPLED in str(app.query_one("#system").render())  # a recorded run has no machine
    monkeypatch.setattr(Recorded, "system_device", torch.device("cpu"))  # as a Live source reports it
    app = Dashboard(store=RunStore())
    async with app.run_test(size=(160, 48)) as pilot:  # every page in view
        panel = app.query_one("#system")
        deadline = time.monotonic() + 30
        while "CPU  process" not in str(panel.render()):
            assert time.monotonic() < deadline, "no system sample within 30 s"
            await pilot.pause(0.1)
        text = str(panel.render())
        assert "RAM  process" in text and "cores" in text


# -- the smoothed loss and MFU on the dashboard ---------------------------------------------------------------------


def test_debiased_ema_starts_at_the_data_and_lags_behind_a_jump():
    flat = debiased_ema(np.full(50, 3.0), 0.9)
    assert np.allclose(flat, 3.0)  # no pull towards zero at the start: that is the debiasing
    jump = debiased_ema(np.r_[np.full(20, 1.0), np.full(20, 2.0)], 0.9)
    assert jump[19] == pytest.approx(1.0) and 1.0 < jump[25] < 2.0 and np.all(np.diff(jump[20:]) > 0)


def store_with_steps(n: int = 60, mfu: float | None = 0.123) -> RunStore:
    store = RunStore()
    store(ev.RunStarted("r", "r", "tiny", {"train": {"max_steps": n}}, 10, 5, "cpu", "fp32", {}, n))
    rng = np.random.default_rng(0)
    for i in range(1, n + 1):
        loss = 5.0 - 2.0 * i / n + float(rng.normal(0, 0.3))
        store(make_step(step=i, epoch=i / n, tokens=100 * i, loss=loss, elapsed=0.01 * i, progress=i / n, mfu=mfu))
    return store


async def test_the_smoothing_key_draws_the_smoothed_loss_and_names_its_value():
    app = Dashboard(store=store_with_steps())
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        chart = app.query_one("#loss")
        assert [s.label for s in chart.series] == ["train", "val"] and "smoothed" not in chart.border_title
        assert "m" in app.active_bindings  # in the footer
        await pilot.press("m")
        await pilot.pause()
        raw, smoothed = chart.series[0], chart.series[1]
        assert smoothed.label == "smoothed" and np.allclose(smoothed.y, debiased_ema(raw.y, 0.9))
        assert np.std(np.diff(smoothed.y)) < np.std(np.diff(raw.y))  # smoother
        assert chart.border_title.endswith(f"smoothed {smoothed.y[-1]:.4f}")
        await pilot.press("l")  # both at once: log scale and smoothing
        await pilot.pause()
        assert ", log scale · smoothed" in chart.border_title
        await pilot.press("m")
        await pilot.pause()
        assert [s.label for s in chart.series] == ["train", "val"] and "smoothed" not in chart.border_title


@pytest.mark.parametrize(("mfu", "title"), [(0.123, "tokens/s · MFU 12.3%"), (None, "tokens/s")])
async def test_the_speed_chart_names_the_mfu(mfu, title):
    app = Dashboard(store=store_with_steps(mfu=mfu))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        assert app.query_one("#speed").border_title == title
