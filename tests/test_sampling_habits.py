"""Sampling against tiny models' habits: min-p and a repetition penalty, in `sample` and `chat` alike."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import run_tuilm
from tuilm.errors import ConfigError
from tuilm.sampling import next_token
from tuilm.sampling_settings import SamplingSettings


def test_min_p_drops_tokens_below_its_share_of_the_likeliest():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log().repeat(4000, 1)
    g = torch.Generator().manual_seed(0)
    s = SamplingSettings(temperature=1.0, top_p=1.0, min_p=0.2)  # floor 0.2 x 0.5 = 0.1: token 3 goes
    counts = torch.bincount(next_token(logits, s, g), minlength=4)
    assert counts[3] == 0 and counts[2] > 0
    loose = torch.bincount(next_token(logits, SamplingSettings(temperature=1.0, top_p=1.0), g), minlength=4)
    assert loose[3] > 0


def test_repetition_penalty_turns_greedy_away_from_what_was_said():
    logits = torch.tensor([[2.0, 1.8, -1.0]])
    before = logits.clone()
    greedy = SamplingSettings(temperature=0)
    assert next_token(logits, greedy, None, history=[0, 0]).item() == 0  # no penalty: the loop goes on
    penalised = SamplingSettings(temperature=0, repetition_penalty=1.3)
    assert next_token(logits, penalised, None, history=[0, 2]).item() == 1
    assert next_token(logits, penalised, None, history=[]).item() == 0
    assert torch.equal(logits, before)  # the caller's logits are left alone


@pytest.mark.parametrize(
    "settings, message",
    [(SamplingSettings(min_p=1.0), "min-p must be in"), (SamplingSettings(repetition_penalty=0.5), "between 1")],
)
def test_bad_values_are_one_clear_error(settings, message):
    with pytest.raises(ConfigError, match=message):
        settings.validate()


def test_sample_and_chat_take_both(trained_run):
    out = run_tuilm(
        "sample", "--model-path", str(trained_run), "-p", "To", "-n", "20", "--seed", "1",
        "--min-p", "0.1", "--repetition-penalty", "1.3",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    bad = run_tuilm("sample", "--model-path", str(trained_run), "--min-p", "2")
    assert bad.returncode == 2 and "min-p must be in [0, 1)" in bad.stderr and len(bad.stderr.splitlines()) == 1
    chat = run_tuilm(
        "chat", "--model-path", str(trained_run), "--repetition-penalty", "1.2", "-n", "8",
        input="/rep\n/rep 1.5\n/min-p 0.05\n/rep 0.2\nTo be\n",
    )  # fmt: skip
    text = chat.stdout + chat.stderr
    assert chat.returncode == 0, text
    assert "repetition penalty 1.2" in text and "repetition penalty 1.5" in text and "min-p 0.05" in text
    assert "between 1 (off) and 10" in text
