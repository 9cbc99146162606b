"""`tuilm chat`: the REPL driven through prompt-toolkit's pipe input, the pipe mode and bad checkpoints via the CLI."""

import asyncio
import io
import json
import re
import shutil
import signal
import sys

import pytest
import torch
from prompt_toolkit.application import create_app_session
from prompt_toolkit.buffer import Buffer
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput
from safetensors.torch import save_file

from tests.helpers import run_tuilm as tuilm
from tests.helpers import start_tuilm
from tuilm.chat import state as state_module
from tuilm.chat.commands import COMMANDS, run_command
from tuilm.chat.repl import Screen, history_path, make_session, run_interactive, run_lines
from tuilm.chat.state import ChatState, build_context, respond
from tuilm.checkpoint import load_checkpoint
from tuilm.commands.chat import chat_command
from tuilm.errors import ConfigError
from tuilm.sampling import SamplingSettings


@pytest.fixture(scope="module")
def run_dir(trained_run):
    return trained_run


@pytest.fixture(scope="module")
def ckpt(run_dir):
    return load_checkpoint(run_dir)


@pytest.fixture
def state(ckpt):
    return ChatState.from_checkpoint(ckpt, SamplingSettings(max_new_tokens=6), "plain", seed=0)


@pytest.fixture(autouse=True)
def _data_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))


class Recorder:
    """A text stream that keeps every write separately, so a test can see a reply arrive in pieces."""

    def __init__(self, on_write=None):
        self.chunks: list[str] = []
        self.on_write = on_write

    def write(self, text: str) -> int:
        self.chunks.append(text)
        if self.on_write:
            self.on_write(self)
        return len(text)

    def flush(self) -> None:
        pass

    @property
    def text(self) -> str:
        return "".join(self.chunks)


def drive(state, keys: str, out=None, err=None, history=None) -> tuple[int, Recorder]:
    """Run the REPL on `keys` as if typed (\\r is Enter, \\x1b Esc, \\x03 Ctrl-C, \\x04 Ctrl-D); keys must leave."""
    out = out or Recorder()
    with create_pipe_input() as pipe, create_app_session(input=pipe, output=DummyOutput()):
        pipe.send_text(keys)
        code = run_interactive(state, Screen(out, err or out), history)
    return code, out


def prompts(state) -> list[str]:
    return [text for role, text in state.transcript if role == "you"]


def replies(state) -> list[str]:
    return [text for role, text in state.transcript if role == "model"]


# -- commands ---------------------------------------------------------------------------------------------------


def test_banner_shows_the_model_and_how_to_leave(state):
    code, out = drive(state, "\x04")
    assert code == 0
    text = out.text
    for fragment in ("parameters", "16 tokens", f"{state.tokenizer.vocab_size} tokens", "cpu", "plain", "0.95"):
        assert fragment in text
    assert "/help" in text and "/quit" in text and "Ctrl-D" in text


def test_each_slash_command_changes_its_setting(state):
    keys = "/temp 0.3\r/top-k 5\r/top-p 0.5\r/max 7\r/seed 9\r/format chat\r/quit\r"
    code, out = drive(state, keys)
    assert code == 0
    assert state.settings == SamplingSettings(temperature=0.3, top_k=5, top_p=0.5, max_new_tokens=7)
    assert state.seed == 9 and state.generator is not None and state.generator.initial_seed() == 9
    assert state.prompt_format == "chat"
    assert "temperature 0.3" in out.text and "format chat" in out.text
    notes = [text for role, text in state.transcript if role == "note"]
    assert "temperature 0.3" in notes and "seed 9" in notes


def test_seed_makes_replies_reproducible(state):
    drive(state, "/seed 5\rword1\r/reset\r/seed 5\rword1\r/quit\r")
    first, second = replies(state)
    assert first == second and first


def test_a_command_without_a_value_shows_the_current_one(state):
    _, out = drive(state, "/temp\r/top-k\r/seed\r/format\r/quit\r")
    assert "temperature 0.8" in out.text and "top-k off" in out.text and "seed 0" in out.text
    assert "format plain" in out.text


@pytest.mark.parametrize(
    ("line", "hint"),
    [
        ("/temp hot", "/temp needs a number"),
        ("/temp -1", "temperature must be between 0"),
        ("/top-k 2.5", "/top-k needs a whole number"),
        ("/top-p 2", "top-p must be in (0, 1]"),
        ("/max 0", "at least 1"),
        ("/seed x", "/seed needs a whole number"),
        ("/seed 99999999999999999999999", "does not fit in 64 bits"),
        ("/format json", "/format takes plain or chat"),
        ("/save", "/save needs a file name"),
        ("/tmep 1", "unknown command /tmep; did you mean /temp?"),
        ("/frobnicate", "unknown command /frobnicate"),
    ],
)
def test_bad_commands_give_a_one_line_hint_and_change_nothing(state, line, hint):
    before = (state.settings, state.seed, state.prompt_format)
    outcome = run_command(state, line)
    assert outcome.error and hint in outcome.message
    assert "\n" not in outcome.message
    assert (state.settings, state.seed, state.prompt_format) == before


def test_bad_value_through_the_repl_prints_one_line(state):
    _, out = drive(state, "/temp hot\r/quit\r")
    lines = out.text.splitlines()
    assert lines[-1] == "/temp needs a number, e.g. /temp 0.7"


def test_reset_info_and_help(state):
    code, out = drive(state, "word1 word2\r/reset\r/info\r/help\r/quit\r")
    assert code == 0
    assert state.context == [state.tokenizer.eos_id]
    assert "1 of 16 context tokens" in out.text and "prompts so far: 1" in out.text
    for name in COMMANDS:
        assert f"/{name}" in out.text
    assert ("note", "conversation reset") in state.transcript


def test_quit_and_ctrl_d_leave_and_ctrl_c_at_the_prompt_clears_the_line(state):
    assert drive(state, "/quit\r")[0] == 0
    code, _ = drive(state, "half a thought\x03\x04")
    assert code == 0 and prompts(state) == []


def test_save_writes_the_transcript(state, tmp_path):
    path = tmp_path / "talk.txt"
    drive(state, f"/temp 0.5\rword1 word2\rsecond\x1b\rline\r/save {path}\r/quit\r")
    text = path.read_text(encoding="utf-8")
    assert "> word1 word2" in text and "> second\n> line" in text
    assert "[temperature 0.5]" in text
    for reply in replies(state):
        assert reply.rstrip("\n") in text


def test_save_asks_before_overwriting_at_a_terminal(state, tmp_path):
    path = tmp_path / "talk.txt"
    path.write_text("precious", encoding="utf-8")
    _, out = drive(state, f"hello\r/save {path}\rn\r/quit\r")
    assert path.read_text(encoding="utf-8") == "precious"
    assert "left as it was" in out.text
    _, out = drive(state, f"hello\r/save {path}\r\x04/quit\r")  # Ctrl-D at the question is a no too
    assert path.read_text(encoding="utf-8") == "precious"
    _, out = drive(state, f"hello\r/save {path}\ry\r/quit\r")
    assert "> hello" in path.read_text(encoding="utf-8") and "saved the transcript" in out.text
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".talk.txt.")]  # no temp file left behind


def test_save_never_overwrites_in_piped_mode(state, tmp_path):
    path = tmp_path / "best.safetensors"
    path.write_bytes(b"weights")
    out, err = Recorder(), Recorder()
    assert run_lines(state, [f"/save {path}\n", "y\n"], Screen(out, err)) == 0
    assert path.read_bytes() == b"weights"
    line = [line for line in err.text.splitlines() if "exists" in line]
    assert len(line) == 1 and "not overwritten" in line[0] and str(path) in line[0]
    fresh = tmp_path / "new.txt"
    run_lines(state, [f"/save {fresh}\n"], Screen(out, err))
    assert fresh.read_text(encoding="utf-8").startswith("# tuilm chat")


def test_piped_chat_cannot_overwrite_the_checkpoint(run_dir, tmp_path):
    target = tmp_path / "best.safetensors"
    shutil.copy(run_dir / "best.safetensors", target)
    before = target.read_bytes()
    out = tuilm("chat", "-m", str(run_dir), "-n", "2", input=f"hi\n/save {target}\n")
    assert out.returncode == 0 and "Traceback" not in out.stderr
    assert target.read_bytes() == before and "exists; not overwritten" in out.stderr


def test_save_to_a_directory_is_one_line(state, tmp_path):
    outcome = run_command(state, f"/save {tmp_path}")
    assert outcome.error and "is a directory" in outcome.message and "\n" not in outcome.message


def test_save_to_an_unwritable_place_is_one_line(state, tmp_path):
    outcome = run_command(state, f"/save {tmp_path / 'missing' / 'dir' / 'talk.txt'}")
    assert outcome.error and outcome.message.startswith("cannot write") and "\n" not in outcome.message


def test_double_slash_sends_text_starting_with_slash(state):
    drive(state, "//etc\r/quit\r")
    assert prompts(state) == ["/etc"]


# -- input features ---------------------------------------------------------------------------------------------


def test_multiline_with_esc_enter_and_the_toggle(state):
    drive(state, "one\x1b\rtwo\r/multiline\rthree\rfour\x1b\r/multiline\x1b\r/quit\r")
    assert prompts(state) == ["one\ntwo", "three\nfour"]
    assert not state.multiline


def test_history_is_persistent_in_the_xdg_data_dir(state, tmp_path):
    path = history_path()
    assert path == tmp_path / "xdg" / "tuilm" / "chat_history"
    drive(state, "/temp 0.5\r/quit\r", history=path)
    assert "/temp 0.5" in path.read_text(encoding="utf-8")
    # Up arrow in a new session brings back the last line of the last one.
    drive(state, "\x1b[A\x1b[A\r/quit\r", history=path)
    assert state.settings.temperature == 0.5


def test_auto_suggest_completes_from_history(state, tmp_path):
    path = tmp_path / "history"
    drive(state, "/top-p 0.5\r/quit\r", history=path)
    with create_pipe_input() as pipe, create_app_session(input=pipe, output=DummyOutput()):
        session, _ = make_session(state, path)

    async def load():
        return [line async for line in session.history.load()]

    assert asyncio.run(load())[:2] == ["/quit", "/top-p 0.5"]  # newest first
    suggestion = session.auto_suggest.get_suggestion(Buffer(history=session.history), Document("/to"))
    assert suggestion is not None and suggestion.text == "p-p 0.5"


def test_history_dir_defaults_to_local_share(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert history_path() == tmp_path / ".local" / "share" / "tuilm" / "chat_history"


def test_slash_commands_complete_and_history_suggests(state, tmp_path):
    with create_pipe_input() as pipe, create_app_session(input=pipe, output=DummyOutput()):
        session, _ = make_session(state, tmp_path / "history")
        found = [c.text for c in session.completer.get_completions(Document("/te"), CompleteEvent())]
        assert found == ["/temp"]
        found = [c.text for c in session.completer.get_completions(Document("/format c"), CompleteEvent())]
        assert found == ["/format chat"]
        assert not list(session.completer.get_completions(Document("To be"), CompleteEvent()))
        assert session.auto_suggest is not None


# -- replies ----------------------------------------------------------------------------------------------------


def test_a_reply_streams_token_by_token(state):
    calls = []
    hook = state.model.register_forward_hook(lambda *_: calls.append(1))
    chunks_at = []  # model forwards done when each chunk was written
    try:
        state.settings = SamplingSettings(temperature=0.8, max_new_tokens=12)
        out = Recorder(on_write=lambda rec: chunks_at.append(len(calls)))
        reply = respond(state, "word1 word2", out.write)
    finally:
        hook.remove()
    assert len(out.chunks) >= 3 and out.text == reply.text
    assert chunks_at[0] < len(calls) == 12  # the first text went out long before the last token was sampled
    assert chunks_at == sorted(chunks_at)


def test_incomplete_utf8_is_held_back_until_whole(state, monkeypatch):
    snowman = list("☃".encode())
    ids = [state.tokenizer.token_bytes.index(bytes([b])) for b in snowman]
    monkeypatch.setattr(state_module, "generate", lambda *a, **k: (i for i in ids))
    out = Recorder()
    reply = respond(state, "x", out.write)
    assert out.chunks == ["☃"] and reply.text == "☃"


def test_ctrl_c_stops_the_reply_and_returns_to_the_prompt(state):
    def interrupt_once(rec):
        if len(rec.chunks) == 2:  # what Ctrl-C does in a terminal: SIGINT while the reply streams
            signal.raise_signal(signal.SIGINT)

    replies_out, chatter = Recorder(on_write=interrupt_once), Recorder()
    code, _ = drive(state, "/max 50\rword1\r/max 3\rword2\r/quit\r", out=replies_out, err=chatter)
    assert code == 0
    assert "note: stopped" in chatter.text
    assert state.transcript[-4:-2] == [("note", "interrupted"), ("note", "max tokens per reply 3")]
    first, second = replies(state)
    assert first == "".join(replies_out.chunks[:2])  # what was shown stays in the conversation
    assert prompts(state) == ["word1", "word2"] and second  # the REPL read on and replied again


def test_overflow_drops_the_oldest_tokens_with_a_notice(state):
    state.settings = SamplingSettings(max_new_tokens=6)
    _, out = drive(state, "word1 word2\rword3 word4\rword5 word6\r/quit\r")
    assert "outgrew the 16-token context window" in out.text
    assert len(state.context) == 16


def test_a_prompt_longer_than_the_window_is_cut_from_the_left(state):
    long = " ".join(f"word{i % 23}" for i in range(40))
    ids = state.tokenizer.encode(long)
    context, notices = build_context(state, long)
    assert context == ids[-16:]
    assert len(notices) == 1 and f"the prompt is {len(ids)} tokens" in notices[0]
    assert f"its first {len(ids) - 16} tokens were cut" in notices[0]
    _, out = drive(state, long + "\r/quit\r")
    assert "note: the prompt is" in out.text and len(state.context) <= 16


def test_chat_format_separates_turns_with_eos_and_carries_context(state, monkeypatch):
    seen = []
    real = state_module.generate

    def spy(model, context, settings, **kwargs):
        seen.append((list(context), kwargs["stop_ids"]))
        return real(model, context, settings, **kwargs)

    monkeypatch.setattr(state_module, "generate", spy)
    state.prompt_format, state.settings = "chat", SamplingSettings(max_new_tokens=3)
    drive(state, "hi\ryo\r/quit\r")
    eos, enc = state.tokenizer.eos_id, state.tokenizer.encode
    (first, stop), (second, _) = seen
    assert stop == (eos,)
    assert first == [eos, *enc("hi"), eos]
    reply_ids = second[len(first) : -len(enc("yo")) - 1]
    assert second[: len(first)] == first  # the first turn is still in view
    assert reply_ids[-1] == eos and eos not in reply_ids[:-1]  # the reply is a document of its own
    assert second[-len(enc("yo")) - 1 :] == [*enc("yo"), eos]
    assert state.context[-1] == eos


def test_chat_reply_stops_at_eos_which_is_not_shown(state, monkeypatch):
    eos, word = state.tokenizer.eos_id, state.tokenizer.encode("word1")
    monkeypatch.setattr(state_module, "generate", lambda *a, **k: (i for i in [*word, eos, *word]))
    state.prompt_format = "chat"
    out = Recorder()
    reply = respond(state, "hi", out.write)
    assert reply.ended and reply.ids == [*word, eos] and out.text == "word1"
    # in plain format eos is a document break, shown as a blank line, and sampling goes on
    state.prompt_format = "plain"
    out = Recorder()
    reply = respond(state, "hi", out.write)
    assert not reply.ended and out.text == "word1\n\nword1"


def test_control_characters_are_defused_in_a_terminal_only():
    raw = Recorder()
    Screen(raw, raw).write("a\x1b[2Jb\tc\n\x9b")
    assert raw.text == "a\x1b[2Jb\tc\n\x9b"  # a pipe gets the model's text as it is
    shown = Recorder()
    Screen(shown, shown, terminal=True).write("a\x1b[2Jb\tc\n\x9b")
    assert shown.text == "a␛[2Jb\tc\n\ufffd"


def test_pipe_mode_prints_replies_and_sends_chatter_to_stderr(state):
    out, err = Recorder(), io.StringIO()
    code = run_lines(state, ["word1\n", "/temp 0\n", "word2\n"], Screen(out, err))
    assert code == 0 and len(replies(state)) == 2
    assert "temperature 0 (greedy)" in err.getvalue() and "temperature" not in out.text
    assert out.text.count("\n") >= 2


def test_chat_command_takes_a_checkpoint_file_and_reads_a_pipe(run_dir, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("word1\n/info\n"))
    code = chat_command(run_dir / "last.safetensors", SamplingSettings(0.0, 0, 1.0, 5), None, "chat", "cpu")
    out, err = capsys.readouterr()
    assert code == 0
    assert "last.safetensors" in err and "format  chat" in err and "last.safetensors" not in out


def test_bad_settings_and_format_are_refused_before_loading(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(ConfigError, match="temperature"):
        chat_command(missing, SamplingSettings(temperature=-1), None, "plain", "cpu")
    with pytest.raises(ConfigError, match="unknown prompt format 'json'"):
        chat_command(missing, SamplingSettings(), None, "json", "cpu")


# -- the real CLI -----------------------------------------------------------------------------------------------


def test_piped_stdin_prints_a_reply(run_dir):
    out = tuilm("chat", "-m", str(run_dir), "-n", "8", "--seed", "1", input="To be\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() and out.stdout.endswith("\n")
    assert "parameters" not in out.stdout + out.stderr  # no banner in a pipe


@pytest.fixture(scope="module")
def bad_checkpoints(run_dir, tmp_path_factory):
    from safetensors import safe_open

    folder = tmp_path_factory.mktemp("bad")
    paths = {"missing": folder / "nope.safetensors", "empty run dir": folder}
    paths["pickle"] = folder / "model.pt"
    torch.save({"weights": torch.zeros(2)}, paths["pickle"])
    paths["not safetensors"] = folder / "garbage.safetensors"
    paths["not safetensors"].write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{broken header...")
    paths["foreign"] = folder / "foreign.safetensors"
    save_file({"weight": torch.zeros(3, 3)}, str(paths["foreign"]))
    with safe_open(str(run_dir / "best.safetensors"), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    meta["model_config"] = json.dumps({**json.loads(meta["model_config"]), "d_model": 64})
    paths["mismatch"] = folder / "mismatch.safetensors"
    save_file(tensors, str(paths["mismatch"]), metadata=meta)
    procs = {name: start_tuilm("chat", "--model-path", str(path)) for name, path in paths.items()}  # all at once
    return {
        name: (out.returncode, out.stdout, out.stderr) for name, out in ((n, p.wait(120)) for n, p in procs.items())
    }


@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("missing", "no such checkpoint file"),
        ("empty run dir", "no best.safetensors or last.safetensors"),
        ("pickle", "refusing to load a PyTorch pickle"),
        ("not safetensors", "not a safetensors file"),
        ("foreign", "not written by tuilm"),
        ("mismatch", "do not match the model config"),
    ],
)
def test_bad_checkpoints_exit_2_with_one_line(bad_checkpoints, case, fragment):
    code, stdout, stderr = bad_checkpoints[case]
    assert code == 2 and stdout == ""
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert stderr.startswith("error: ") and fragment in stderr


# -- chat that teaches: reply stats, /probs, /top, /load ----------------------------------------------------------


def test_each_reply_is_followed_by_its_tokens_rate_and_time_to_first_token(state):
    err = Recorder()
    code, out = drive(state, "word1\r/quit\r", err=err)
    assert code == 0
    [stats] = [line for line in err.text.splitlines() if " tok/s · first token " in line]
    n = int(stats.split()[0])
    assert 1 <= n <= 6 and stats.endswith(" ms")
    assert " tok/s" not in out.text  # the reply stream holds only the reply


def test_probs_marks_each_reply_token_with_its_probability(state):
    marked, err = Recorder(), Recorder()
    drive(state, "/probs\rword1\r/quit\r", out=marked, err=err)
    plain = Recorder()
    drive(state, "/probs\rword2\r/quit\r", out=plain, err=err)
    assert "probabilities on" in err.text and "probabilities off" in err.text
    first, second = replies(state)
    percents = [int(p) for p in re.findall(r"\[(\d+)%\]", marked.text)]
    assert 1 <= len(percents) <= 6 and all(0 <= p <= 100 for p in percents)  # in the stream, token by token
    assert re.sub(r"\[\d+%\]", "", marked.text).rstrip("\n") == first.rstrip("\n")  # the transcript: text alone
    assert "%]" not in plain.text and plain.text.rstrip("\n") == second.rstrip("\n")  # only while it was on
    assert err.text.count("probabilities: each token is followed by") == 1  # the legend, after the marked reply


def test_top_lists_the_likeliest_next_tokens_summing_to_at_most_one(state):
    err = Recorder()
    drive(state, "word1\r/top 5\r/top zero\r/quit\r", err=err)
    lines = err.text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("the 5 likeliest next tokens"))
    rows = lines[start + 1 : start + 6]
    probs = [float(row.split("%")[0]) / 100 for row in rows]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    assert "/top needs a whole number" in err.text


def test_load_switches_checkpoint_and_starts_over(state, run_dir, tmp_path):
    err = Recorder()
    drive(state, f"word1\r/load {run_dir / 'last.safetensors'}\r/load {tmp_path / 'none'}\r/quit\r", err=err)
    assert state.source.endswith("last.safetensors") and state.context == [state.tokenizer.eos_id]
    assert "loaded " in err.text and "the conversation starts over" in err.text
    assert any(line.startswith("/load: ") for line in err.text.splitlines())  # a bad path: one line, still chatting
