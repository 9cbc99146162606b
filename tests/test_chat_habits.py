"""The REPL against tiny models' habits: /regen, /undo, stop strings, /probs colouring while streaming, and
/reload when the run being chatted with is still training."""

from __future__ import annotations

import os
import random
import re
import shutil

import pytest
from prompt_toolkit.application import create_app_session
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from tests.helpers import hold_lock_in_child, run_tuilm
from tests.test_chat import Recorder, drive, prompts, replies
from tuilm.chat import state as state_module
from tuilm.chat.repl import PROB_BANDS, Screen, run_interactive
from tuilm.chat.state import ChatState, next_token_probs, respond
from tuilm.checkpoint import load_checkpoint, save_checkpoint
from tuilm.formatting import visible
from tuilm.sampling import SamplingSettings
from tuilm.stop_strings import StopFilter, cut_at_stop, held_back, parse_stop, show_stop

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module")
def ckpt(trained_run):
    return load_checkpoint(trained_run)


@pytest.fixture
def state(ckpt, tmp_path, monkeypatch):
    """A plain-format chat with short replies, its history in a temporary place, colour allowed."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("NO_COLOR", raising=False)
    return ChatState.from_checkpoint(ckpt, SamplingSettings(max_new_tokens=6), "plain", seed=0)


def drive_on(state, keys: str, screen: Screen) -> int:
    with create_pipe_input() as pipe, create_app_session(input=pipe, output=DummyOutput()):
        pipe.send_text(keys)
        return run_interactive(state, screen, None)


# -- stop strings, the filter -------------------------------------------------------------------------------------


def test_streamed_text_equals_the_text_cut_at_the_first_stop_however_it_is_split():
    rng = random.Random(0)
    for _ in range(300):
        text = "".join(rng.choice("ab\nc") for _ in range(rng.randint(0, 30)))
        stops = tuple({"".join(rng.choice("ab\nc") for _ in range(rng.randint(1, 4))) for _ in range(2)})
        cuts = sorted(rng.sample(range(len(text) + 1), k=min(len(text) + 1, rng.randint(0, 8))))
        pieces = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        f = StopFilter(stops)
        shown = "".join(p.text for piece in pieces for p in f.feed(piece)) + "".join(p.text for p in f.flush())
        assert shown == cut_at_stop(text, stops), (text, stops, pieces)
        assert f.stopped == (cut_at_stop(text, stops) != text)


def test_only_what_could_start_a_stop_string_is_held_back():
    f = StopFilter(("\nYOU:",))
    assert [p.text for p in f.feed("Hello\nY", 0.9)] == ["Hello"]  # "\nY" might be the start of "\nYOU:"
    assert held_back("Hello\nY", ("\nYOU:",)) == 2 and held_back("Hello", ("\nYOU:",)) == 0
    pieces = f.feed("es", 0.4)  # "\nYes" is not: everything goes out, still tagged with its token
    assert [(p.text, p.tag, p.last) for p in pieces] == [("\nY", 0.9, True), ("es", 0.4, True)]
    assert [(p.text, p.last) for p in f.feed("ok\nYO", 0.2)] == [("ok", False)]  # split: the rest is held
    assert f.feed("U: and more") == [] and f.stopped and f.feed("later") == [] and f.flush() == []


def test_stop_strings_are_typed_with_escapes_and_quotes():
    assert parse_stop("\\n") == "\n" and parse_stop("a\\tb\\\\") == "a\tb\\"
    assert parse_stop('" YOU:"') == " YOU:" and parse_stop("\\q") == "\\q"
    for stop in ["\n", " x ", "a\\b", "\t\r"]:
        assert parse_stop(show_stop(stop)) == stop


# -- stop strings in a reply --------------------------------------------------------------------------------------


def test_a_reply_ends_at_a_stop_string_which_is_neither_shown_nor_kept(state, monkeypatch):
    enc = state.tokenizer.encode
    ids = enc("word1 word2 word3 word4")
    pulled = []

    def fake(*args, **kwargs):
        for i in ids:
            pulled.append(i)
            yield i

    monkeypatch.setattr(state_module, "generate", fake)
    state.settings = SamplingSettings(stop=(" word3",))
    out = Recorder()
    before = list(state.context)
    reply = respond(state, "hi", out.write)
    assert out.text == reply.text == "word1 word2" and reply.stopped
    assert len(pulled) < len(ids)  # sampling ended there, no tokens wasted
    assert state.tokenizer.decode(state.context[len(before) + len(enc("hi")) :]) == "word1 word2"


def test_stop_command_adds_lists_and_clears(state):
    err = Recorder()
    drive(state, '/stop\r/stop \\n\r/stop " x"\r/stop \\n\r/stop\r/stop ""\r/stop clear\r/stop\r/quit\r', err=err)
    text = err.text
    assert "no stop strings" in text
    assert 'replies now end at "\\n"' in text and '"\\n" is already a stop string' in text
    assert 'stop strings: "\\n" " x"' in text
    assert "a stop string cannot be empty" in text
    assert "stop strings cleared (2 removed)" in text and state.settings.stop == ()


# -- /undo and /regen ---------------------------------------------------------------------------------------------


def test_undo_drops_the_last_exchange_from_the_context(state):
    drive(state, "word1\r/quit\r")
    after_first = list(state.context)
    err = Recorder()
    drive(state, "word2 word3\r/undo\r/quit\r", err=err)
    assert state.context == after_first and "undone: 'word2 word3'" in err.text
    drive(state, "/undo\r/undo\r/quit\r", err=err)
    assert state.context == [state.tokenizer.eos_id]
    assert "nothing to undo" in err.text
    assert prompts(state) == ["word1", "word2 word3"]  # the transcript keeps what happened


def test_regen_samples_the_last_reply_again_from_the_same_context(state, monkeypatch):
    seen = []
    real = state_module.generate

    def spy(model, context, settings, **kwargs):
        seen.append(list(context))
        return real(model, context, settings, **kwargs)

    monkeypatch.setattr(state_module, "generate", spy)
    err = Recorder()
    drive(state, "/regen\r/temp 3\r/top-p 1\r/max 12\rword1\r/regen\r/quit\r", err=err)
    assert "nothing to regenerate yet" in err.text
    first, again = seen
    assert first == again  # the same context: the first reply is gone from it
    one, two = replies(state)
    assert one != two  # fresh randomness (seeded, so this holds every run)
    assert state.context[: len(first)] == first and len(state.turns) == 1
    assert prompts(state) == ["word1", "word1"]
    assert ("note", "regenerated: the reply above was sampled again") in state.transcript


# -- /probs colours the stream itself -----------------------------------------------------------------------------


def test_probs_colours_each_token_as_it_streams_with_a_legend(state):
    out, err = Recorder(), Recorder()
    assert drive_on(state, "/probs\rword1\r/quit\r", Screen(out, err, terminal=True)) == 0
    [reply] = replies(state)
    coloured = [c for c in out.chunks if c.startswith("\x1b[3")]
    assert coloured and ANSI.sub("", "".join(out.chunks)).rstrip("\n") == visible(reply).rstrip("\n")
    # the first piece is coloured by the probability the model gave the first token
    prefix = [state.tokenizer.eos_id, *state.tokenizer.encode("word1")]
    p = float(next_token_probs(state, prefix)[state.context[len(prefix)]])
    expected = next(colour for floor, colour, _ in PROB_BANDS if p >= floor)
    assert coloured[0].startswith(expected)
    assert "green: the model gave the token >= 50%" in ANSI.sub("", err.text)


def test_probs_without_colour_marks_each_token_with_its_percentage(state, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    out, err = Recorder(), Recorder()
    drive_on(state, "/probs\rword1\r/quit\r", Screen(out, err, terminal=True))
    assert "\x1b[" not in out.text + err.text  # NO_COLOR: no colour anywhere, the chatter included
    assert re.findall(r"\[\d+%\]", out.text) and "each token is followed by" in err.text


# -- /reload while the run trains ---------------------------------------------------------------------------------


def test_a_newer_best_of_a_live_run_is_announced_between_prompts_and_reloaded(ckpt, trained_run, tmp_path):
    run = tmp_path / "live"
    run.mkdir()
    shutil.copy(trained_run / "best.safetensors", run / "best.safetensors")
    idle = ChatState.from_checkpoint(load_checkpoint(run), SamplingSettings(max_new_tokens=4), "plain", 0, run)
    assert idle.watch is None  # nobody trains it: nothing to watch
    child = hold_lock_in_child(run)
    try:
        state = ChatState.from_checkpoint(load_checkpoint(run), SamplingSettings(max_new_tokens=4), "plain", 0, run)
        err = Recorder()
        drive(state, "word1\r/quit\r", err=err)
        assert "is newer (" not in err.text  # the best loaded is the newest
        save_checkpoint(run / "best.safetensors", ckpt.model, ckpt.tokenizer, ckpt.run_config, step=42, val_loss=1.5)
        later = os.stat(run / "best.safetensors").st_mtime + 5  # a clock's coarse tick must not hide the change
        os.utime(run / "best.safetensors", (later, later))
        context = list(state.context)
        drive(state, "word2\r/reload\r/quit\r", err=err)
    finally:
        child.kill()
        child.wait()
    notice = "note: best.safetensors is newer (step 42, val 1.500): /reload to load it"
    assert err.text.count(notice) == 1  # once, before the first prompt after it appeared
    assert "reloaded " in err.text and "step 42" in err.text and "the conversation goes on" in err.text
    assert state.meta["step"] == 42 and state.context[: len(context)] == context


# -- the CLI ------------------------------------------------------------------------------------------------------


def test_sample_stop_ends_the_completion_before_the_stop_string(trained_run):
    args = ["sample", "--model-path", str(trained_run), "-p", "To", "-n", "30", "--seed", "4", "-t", "1.5"]
    full = run_tuilm(*args)
    assert full.returncode == 0, full.stderr
    completion = full.stdout[len("To") :].rstrip("\n")
    stop = completion[3:5]
    assert len(stop) == 2
    cut = run_tuilm(*args, "--stop", stop, "--stop", "never seen")
    assert cut.returncode == 0, cut.stderr
    assert cut.stdout == "To" + completion[: completion.index(stop)] + "\n"
    bad = run_tuilm(*args, "--stop", "")
    assert bad.returncode == 2 and bad.stderr.strip() == "error: a stop string cannot be empty"
