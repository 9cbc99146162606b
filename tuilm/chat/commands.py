"""Slash commands: each a plain function of (state, argument) that changes the state and says what it did.

A bad argument or an unknown command is answered with one line that says how to get it right; nothing here
raises for user input.
"""

from __future__ import annotations

import difflib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from tuilm.atomic import atomic_write_text, temp_file
from tuilm.chat.state import FORMATS, ChatState, next_token_probs
from tuilm.errors import ConfigError
from tuilm.formatting import human
from tuilm.stop_strings import parse_stop, show_stop


@dataclass(frozen=True)
class Outcome:
    message: str = ""
    error: bool = False  # a one-line hint: the command was not understood or its value was refused
    quit: bool = False
    # A yes/no question to put before `then` runs; only asked at a terminal: elsewhere `message` stands
    confirm: str = ""
    then: Callable[[], Outcome] | None = None
    reply_to: str | None = None  # a prompt to reply to now, streamed as any other (/regen)


@dataclass(frozen=True)
class Command:
    name: str
    usage: str  # the argument, as shown in /help
    help: str
    run: Callable[[ChatState, str], Outcome]


def _number(kind: type, text: str, what: str, example: str) -> int | float:
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(f"{what} needs {'a whole number' if kind is int else 'a number'}, e.g. {example}") from None


def _setting(field: str, kind: type, label: str, example: str) -> Callable[[ChatState, str], Outcome]:
    def run(state: ChatState, arg: str) -> Outcome:
        if not arg:
            return Outcome(f"{label} {describe_value(field, getattr(state.settings, field))}")
        value = _number(kind, arg, example.split()[0], example)
        settings = replace(state.settings, **{field: value})
        settings.validate()
        state.settings = settings
        message = f"{label} {describe_value(field, value)}"
        state.note(message)
        return Outcome(message)

    return run


def describe_value(field: str, value) -> str:
    if field == "top_k" and value == 0:
        return "off (0)"
    if field == "top_p" and value == 1:
        return "off (1.0)"
    if field == "temperature" and value == 0:
        return "0 (greedy)"
    return str(value)


def _seed(state: ChatState, arg: str) -> Outcome:
    if not arg:
        return Outcome(f"seed {state.seed if state.seed is not None else 'random'}")
    seed = None if arg.lower() in ("random", "none", "off") else _number(int, arg, "/seed", "/seed 42 or /seed random")
    state.reseed(seed)
    message = f"seed {seed if seed is not None else 'random'}"
    state.note(message)
    return Outcome(message)


def _format(state: ChatState, arg: str) -> Outcome:
    if not arg:
        return Outcome(f"format {state.prompt_format}: {FORMATS[state.prompt_format]}")
    if arg not in FORMATS:
        raise ConfigError(f"/format takes plain or chat, not '{arg}'")
    state.prompt_format = arg
    state.note(f"format {arg}")
    return Outcome(f"format {arg}: {FORMATS[arg]}")


def _reset(state: ChatState, arg: str) -> Outcome:
    state.reset()
    state.note("conversation reset")
    return Outcome("conversation reset: the model starts from an empty context")


def _info(state: ChatState, arg: str) -> Outcome:
    return Outcome(info_text(state))


def _save(state: ChatState, arg: str) -> Outcome:
    """Write the transcript atomically; an existing file is replaced only when the user at a terminal says yes.

    In a pipe or script nothing is ever overwritten: a prompt file must not be able to clobber a checkpoint.
    """
    if not arg:
        raise ConfigError("/save needs a file name, e.g. /save chat.txt")
    path = Path(arg).expanduser()
    text = transcript_text(state)
    turns = sum(1 for role, _ in state.transcript if role == "you")
    done = Outcome(f"saved the transcript ({turns} prompt{'s' * (turns != 1)}) to {path}")
    if path.is_dir():
        raise ConfigError(f"{path} is a directory; give a file name, e.g. /save {path / 'chat.txt'}")
    try:
        _write_new(path, text)
    except FileExistsError:

        def overwrite() -> Outcome:
            try:
                atomic_write_text(path, text)
            except OSError as e:
                return Outcome(f"cannot write {path}: {e.strerror or e}", error=True)
            return done

        return Outcome(
            f"{path} exists; not overwritten (input is not a terminal, so /save never replaces a file): "
            "save under a new name",
            error=True,
            confirm=f"{path} exists; overwrite it? [y/N] ",
            then=overwrite,
        )
    except OSError as e:
        raise ConfigError(f"cannot write {path}: {e.strerror or e}") from None
    return done


def _write_new(path: Path, text: str) -> None:
    """Write a file that must not exist yet, atomically: FileExistsError if it does (or appears meanwhile)."""
    if path.exists() or path.is_symlink():
        raise FileExistsError(path)
    fd, tmp = temp_file(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails if the name was taken meanwhile, unlike a rename
        except FileExistsError:
            raise
        except OSError:  # a filesystem without hard links: the check above has to do
            os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _multiline(state: ChatState, arg: str) -> Outcome:
    state.multiline = not state.multiline
    return Outcome(multiline_hint(state))


PROBS_LEGEND = "green: the model gave the token >= 50% · yellow: >= 10% · red, underlined: below 10%"
PROBS_PLAIN = "each token is followed by the probability the model gave it, e.g. the[42%]"


def _probs(state: ChatState, arg: str) -> Outcome:
    state.show_probs = not state.show_probs
    if state.show_probs:
        return Outcome("probabilities on: each reply's tokens are marked as they stream (temperature 1)")
    return Outcome("probabilities off")


def _undo(state: ChatState, arg: str) -> Outcome:
    turn = _rewind(state, "nothing to undo: no exchange since the start, /reset or /load")
    state.note("undone: the last exchange left the context")
    return Outcome(f"undone: {_quote(turn.prompt)} and its reply left the context ({len(state.context)} tokens in use)")


def _regen(state: ChatState, arg: str) -> Outcome:
    turn = _rewind(state, "nothing to regenerate yet: send a prompt first")
    state.note("regenerated: the reply above was sampled again")
    same = " (temperature 0 is greedy: expect the same reply)" if state.settings.temperature == 0 else ""
    return Outcome(f"sampling the reply to {_quote(turn.prompt)} again{same}", reply_to=turn.prompt)


def _rewind(state: ChatState, nothing: str):
    """Take the last exchange out of the context, back to what it was before that prompt; its Turn."""
    if not state.turns:
        raise ConfigError(nothing)
    turn = state.turns.pop()
    state.context = list(turn.before)
    return turn


def _quote(prompt: str, limit: int = 40) -> str:
    text = prompt.replace("\n", " ")
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


def _stop(state: ChatState, arg: str) -> Outcome:
    stops = state.settings.stop
    if not arg:
        if not stops:
            return Outcome("no stop strings; /stop TEXT adds one (\\n is a newline, quotes keep spaces)")
        return Outcome("stop strings: " + " ".join(show_stop(s) for s in stops))
    if arg.lower() == "clear":
        state.settings = replace(state.settings, stop=())
        state.note("stop strings cleared")
        return Outcome(f"stop strings cleared ({len(stops)} removed)")
    stop = parse_stop(arg)
    if stop in stops:
        return Outcome(f"{show_stop(stop)} is already a stop string")
    settings = replace(state.settings, stop=(*stops, stop))
    settings.validate()
    state.settings = settings
    state.note(f"stop string {show_stop(stop)}")
    return Outcome(f"replies now end at {show_stop(stop)} (not shown); stop strings: {len(settings.stop)}")


def _top(state: ChatState, arg: str) -> Outcome:
    n = _number(int, arg, "/top", "/top 10") if arg else 10
    if not 1 <= n <= 100:
        raise ConfigError("/top takes a number from 1 to 100, e.g. /top 10")
    probs = next_token_probs(state, state.context)
    values, indices = probs.topk(min(n, probs.numel()))
    lines = [f"the {len(indices)} likeliest next tokens (temperature 1):"]
    for p, i in zip(values.tolist(), indices.tolist(), strict=True):
        lines.append(f"  {p:7.2%}  {token_label(state, i)}")
    return Outcome("\n".join(lines))


def token_label(state: ChatState, token: int) -> str:
    if token == state.tokenizer.eos_id:
        return "<|eos|>"
    return repr(state.tokenizer.decode([token]))


def _load(state: ChatState, arg: str) -> Outcome:
    if not arg:
        raise ConfigError("/load needs a checkpoint or run directory, e.g. /load runs/my-run")
    from tuilm.chat.reload import watch_if_training

    path = Path(arg).expanduser()
    ckpt = _read(path, state, "/load")
    state.model, state.tokenizer, state.source, state.meta = ckpt.model, ckpt.tokenizer, str(ckpt.path), ckpt.meta
    state.watch = watch_if_training(path, ckpt.path)
    state.reset()
    state.note(f"loaded {ckpt.path}")
    return Outcome(f"loaded {ckpt.path}; the conversation starts over\n{info_text(state)}")


def _reload(state: ChatState, arg: str) -> Outcome:
    """The run's newest best checkpoint (or the file loaded, again); the conversation goes on when the tokenizer
    is the same, as it is within one run."""
    if arg:
        raise ConfigError("/reload takes no argument; /load PATH switches to another checkpoint")
    path = state.watch.run_dir if state.watch is not None else Path(state.source)
    ckpt = _read(path, state, "/reload")
    same_tokens = ckpt.tokenizer.token_bytes == state.tokenizer.token_bytes
    state.model, state.tokenizer, state.source, state.meta = ckpt.model, ckpt.tokenizer, str(ckpt.path), ckpt.meta
    if state.watch is not None:
        state.watch.loaded()
    trained = model_lines(state)[0][1]
    state.note(f"reloaded {trained}")
    if same_tokens:
        return Outcome(f"reloaded {trained}; the conversation goes on")
    state.reset()
    return Outcome(f"reloaded {trained}; its tokenizer differs, so the conversation starts over")


def _read(path: Path, state: ChatState, command: str):
    from tuilm.checkpoint import load_checkpoint
    from tuilm.errors import TuilmError

    try:
        return load_checkpoint(path, state.device)
    except TuilmError as e:
        raise ConfigError(f"{command}: {e}") from None


def _help(state: ChatState, arg: str) -> Outcome:
    return Outcome(help_text())


def _quit(state: ChatState, arg: str) -> Outcome:
    return Outcome(quit=True)


COMMANDS = {
    c.name: c
    for c in [
        Command("help", "", "this list", _help),
        Command("temp", "T", "sampling temperature; 0 is greedy", _setting("temperature", float, "temperature", "/temp 0.7")),
        Command("top-k", "K", "sample among the K most likely tokens; 0 for all", _setting("top_k", int, "top-k", "/top-k 40")),
        Command("top-p", "P", "sample among the likeliest tokens holding P of the mass; 1 for all", _setting("top_p", float, "top-p", "/top-p 0.9")),
        Command("min-p", "P", "drop tokens less likely than P x the likeliest; 0 for off", _setting("min_p", float, "min-p", "/min-p 0.05")),
        Command("rep", "R", "repetition penalty on tokens already said; 1 for off", _setting("repetition_penalty", float, "repetition penalty", "/rep 1.2")),
        Command("max", "N", "tokens per reply", _setting("max_new_tokens", int, "max tokens per reply", "/max 100")),
        Command("stop", "TEXT|clear", "end replies at TEXT (\\n: newline); no value lists them", _stop),
        Command("seed", "S", "seed for reproducible replies; random for none", _seed),
        Command("format", "plain|chat", "how prompts and replies are joined", _format),
        Command("regen", "", "sample the last reply again, with fresh randomness", _regen),
        Command("undo", "", "drop the last prompt and its reply from the context", _undo),
        Command("reset", "", "forget the conversation (the transcript keeps it)", _reset),
        Command("info", "", "the model, the settings and how full the context is", _info),
        Command("save", "FILE", "write the transcript to FILE", _save),
        Command("multiline", "", "toggle multi-line input (also F2)", _multiline),
        Command("probs", "", "toggle colouring each reply's tokens by their probability", _probs),
        Command("top", "N", "the N likeliest next tokens with their probabilities", _top),
        Command("load", "PATH", "switch to another checkpoint (the conversation starts over)", _load),
        Command("reload", "", "load the run's newest best checkpoint (the conversation goes on)", _reload),
        Command("quit", "", "leave (also Ctrl-D)", _quit),
    ]
}  # fmt: skip


def is_command(text: str) -> bool:
    """A line starting with / is a command; // sends the rest as text starting with /."""
    return text.startswith("/") and not text.startswith("//")


def run_command(state: ChatState, line: str) -> Outcome:
    name, _, arg = line.strip()[1:].partition(" ")
    name, arg = name.lower(), arg.strip()
    command = COMMANDS.get(name)
    if command is None:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f"did you mean /{close[0]}? " if close else ""
        return Outcome(f"unknown command /{name}; {hint}/help lists the commands", error=True)
    try:
        return command.run(state, arg)
    except ConfigError as e:
        return Outcome(str(e), error=True)


def help_text() -> str:
    width = max(len(c.name) + len(c.usage) for c in COMMANDS.values()) + 3
    lines = ["commands:"]
    for c in COMMANDS.values():
        lines.append(f"  {('/' + c.name + ' ' + c.usage).ljust(width)} {c.help}")
    lines += [
        "  a command with no value shows the current one; //text sends text that starts with /",
        "keys: Enter sends · Esc Enter adds a line (sends, in multi-line mode) · F2 multi-line · "
        "Ctrl-C stops a reply · Ctrl-D leaves",
    ]
    return "\n".join(lines)


def multiline_hint(state: ChatState) -> str:
    if state.multiline:
        return "multi-line: Enter adds a line, Esc Enter sends"
    return "Esc Enter adds a line, F2 multi-line"


def settings_text(state: ChatState) -> str:
    s = state.settings
    return (
        f"temperature {describe_value('temperature', s.temperature)} · top-k {describe_value('top_k', s.top_k)} · "
        f"top-p {describe_value('top_p', s.top_p)} · min-p {s.min_p:g} · repetition penalty {s.repetition_penalty:g} · "
        f"max {s.max_new_tokens} tokens · seed {state.seed if state.seed is not None else 'random'}"
        + (f" · stop {' '.join(show_stop(x) for x in s.stop)}" if s.stop else "")
    )


def model_lines(state: ChatState) -> list[tuple[str, str]]:
    cfg, meta = state.model.cfg, state.meta
    trained = [f"step {meta['step']:,}"] if isinstance(meta.get("step"), int) else []
    if isinstance(meta.get("val_loss"), float):
        trained.append(f"val loss {meta['val_loss']:.3f}")
    if isinstance(meta.get("val_bpc"), float):
        trained.append(f"{meta['val_bpc']:.3f} bits/char")
    return [
        ("model", state.source + (f" ({', '.join(trained)})" if trained else "")),
        (
            "size",
            f"{human(state.model.num_params())} parameters · {cfg.n_layers} layers · d_model {cfg.d_model} · "
            f"{cfg.n_heads} heads",
        ),
        ("context", f"{state.window} tokens"),
        ("tokenizer", f"byte-level BPE, {state.tokenizer.vocab_size:,} tokens"),
        ("device", str(state.device)),
        ("format", f"{state.prompt_format}: {FORMATS[state.prompt_format]}"),
        ("sampling", settings_text(state)),
    ]


def info_text(state: ChatState) -> str:
    rows = model_lines(state)
    turns = sum(1 for role, _ in state.transcript if role == "you")
    rows.append(("in use", f"{len(state.context)} of {state.window} context tokens · prompts so far: {turns}"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.rjust(width)}  {v}" for k, v in rows)


def transcript_text(state: ChatState) -> str:
    """Prompts quoted with '> ' as they were typed, replies verbatim, settings changes and resets in brackets."""
    lines = [f"# tuilm chat with {state.source}, saved {time.strftime('%Y-%m-%d %H:%M')}"]
    for role, text in state.transcript:
        lines.append("")
        if role == "you":
            lines += ["> " + line for line in text.split("\n")]
        elif role == "model":
            lines.append(text.rstrip("\n"))
        else:
            lines.append(f"[{text}]")
    return "\n".join(lines) + "\n"
