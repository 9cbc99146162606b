"""`tuilm chat`: the prompt-toolkit front end and the line-by-line one for pipes, over session and commands.

Everything the REPL decides lives in `session` (context, sampling a reply) and `commands` (slash commands); this
module only reads lines, writes text and maps keys.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from tuilm.chat.commands import (
    COMMANDS,
    PROBS_LEGEND,
    PROBS_PLAIN,
    Outcome,
    is_command,
    model_lines,
    multiline_hint,
    run_command,
    settings_text,
)
from tuilm.chat.state import ChatState, respond
from tuilm.formatting import visible

KEYS = "Enter sends · Esc Enter adds a line · F2 multi-line · Ctrl-C stops a reply · /help · Ctrl-D or /quit leaves"

_STYLES = {"notice": "\x1b[33m", "hint": "\x1b[33m", "info": "\x1b[2m"}


@dataclass
class Screen:
    """Where text goes: replies to `out`; banner, notices and command answers to `err` (the same in a terminal,
    stderr in a pipe, so a script's stdout holds nothing but replies)."""

    out: TextIO
    err: TextIO
    terminal: bool = False  # colour the chatter and defuse control characters in replies
    colour: bool | None = None  # None: at a terminal, unless NO_COLOR is set (no-color.org)

    def __post_init__(self) -> None:
        if self.colour is None:
            self.colour = self.terminal and not os.environ.get("NO_COLOR")

    def write(self, text: str) -> None:
        self.out.write(visible(text) if self.terminal else text)
        self.out.flush()

    def write_marked(self, text: str, p: float | None, last: bool) -> None:
        """A piece of a reply and the probability of its token: coloured by it, or (without colour) the token
        followed by the percentage in brackets, once, where the token's text ends."""
        shown = visible(text) if self.terminal else text
        if p is None:
            self.out.write(shown)
        elif self.colour:
            if shown:
                colour, mark = next((c, m) for floor, c, m in PROB_BANDS if p >= floor)
                self.out.write(f"{colour}{mark}{shown}\x1b[0m")
        else:
            self.out.write(shown + (f"[{p:.0%}]" if last else ""))
        self.out.flush()

    def legend(self) -> str:
        if not self.colour:
            return PROBS_PLAIN
        return " · ".join(
            f"{colour}{mark}{part}\x1b[0m"
            for (_, colour, mark), part in zip(PROB_BANDS, PROBS_LEGEND.split(" · "), strict=True)
        )

    def say(self, text: str, style: str = "info") -> None:
        if self.colour and style in _STYLES:
            text = f"{_STYLES[style]}{text}\x1b[0m"
        self.err.write(text + "\n")
        self.err.flush()

    def notice(self, text: str) -> None:
        self.say(f"note: {text}", "notice")


def banner(state: ChatState) -> str:
    rows = model_lines(state)
    width = max(len(k) for k, _ in rows)
    return "\n".join([*(f"{k.rjust(width)}  {v}" for k, v in rows), KEYS])


def handle(state: ChatState, text: str, screen: Screen, ask: Callable[[str], bool] | None = None) -> bool:
    """Act on one input (a command or a prompt); False when it asks to leave.

    `ask` puts a yes/no question to the user (at a terminal only); without it, a command needing one is refused.
    """
    if not text.strip():
        return True
    if is_command(text):
        outcome = run_command(state, text)
        if outcome.then is not None and ask is not None:
            outcome = outcome.then() if ask(outcome.confirm) else Outcome("left as it was")
        if outcome.message:
            screen.say(outcome.message, "hint" if outcome.error else "info")
        if outcome.reply_to is not None:
            return reply(state, outcome.reply_to, screen)
        return not outcome.quit
    return reply(state, text[1:] if text.startswith("//") else text, screen)


def reply(state: ChatState, prompt: str, screen: Screen) -> bool:
    """Stream the reply to `prompt`, then what the user should know about it."""
    marked = screen.write_marked if state.show_probs else None
    answer = respond(state, prompt, screen.write, screen.notice, marked)
    if not answer.text.endswith("\n"):  # one reply, one line at least, even an empty one: scripts count them
        screen.write("\n")
    if answer.interrupted:
        screen.notice("stopped; what was written stays in the conversation")
    elif not answer.text:
        why = "it began with a stop string" if answer.stopped else "the model ended its turn at once"
        screen.notice(f"the reply was empty ({why})")
    for text in answer.notices:
        screen.notice(text)
    if state.show_probs and answer.ids:
        screen.say("probabilities: " + screen.legend(), "plain")
    screen.say(reply_stats(answer), "info")
    return True


def between_prompts(state: ChatState, screen: Screen) -> None:
    """What may be said only while nobody types and no reply streams: a newer best checkpoint of a live run."""
    if state.watch is not None and (text := state.watch.check()):
        screen.notice(text)


def reply_stats(reply) -> str:
    """`12 tokens · 85.3 tok/s · first token 40 ms`, as llama.cpp prints after a reply (dimmed at a terminal)."""
    rate = f"{reply.tokens_per_s:.1f} tok/s" if reply.tokens_per_s else "- tok/s"
    first = f"first token {reply.first_token_s * 1000:.0f} ms" if reply.first_token_s is not None else "no tokens"
    return f"{len(reply.ids)} token{'s' * (len(reply.ids) != 1)} · {rate} · {first}"


PROB_BANDS = (
    (0.5, "\x1b[32m", ""),
    (0.1, "\x1b[33m", ""),
    (0.0, "\x1b[31m", "\x1b[4m"),
)  # green, yellow, red+underline


def run_lines(state: ChatState, lines: Iterable[str], screen: Screen) -> int:
    """Each line a prompt (or a command), each reply printed: for scripts and pipes."""
    state.note(f"format {state.prompt_format} · {settings_text(state)}")
    try:
        for line in lines:
            between_prompts(state, screen)
            if not handle(state, line.rstrip("\r\n"), screen):
                break
    except KeyboardInterrupt:
        return 130  # a script's Ctrl-C stops the script, not just one reply
    return 0


def run_interactive(state: ChatState, screen: Screen, history: Path | None = None) -> int:
    """The REPL. prompt-toolkit reads from the current app session, so tests drive it through a pipe input."""
    state.note(f"format {state.prompt_format} · {settings_text(state)}")
    screen.say(banner(state), "info")
    session, warning = make_session(state, history)
    if warning:
        screen.notice(warning)
    while True:
        between_prompts(state, screen)
        try:
            text = session.prompt(prompt_message(state))
        except KeyboardInterrupt:  # Ctrl-C at the prompt clears the line, as in a shell
            continue
        except EOFError:
            return 0
        try:
            if not handle(state, text, screen, ask=confirm):
                return 0
        except KeyboardInterrupt:  # Ctrl-C outside the sampling loop (while a command ran, say)
            screen.notice("interrupted")


def confirm(question: str) -> bool:
    """Yes only for y or yes; Ctrl-C or Ctrl-D answer no. A session of its own: the answer stays out of the
    chat's history and settings."""
    from prompt_toolkit import prompt

    try:
        return prompt(question).strip().lower() in ("y", "yes")
    except (KeyboardInterrupt, EOFError):
        return False


def prompt_message(state: ChatState):
    from prompt_toolkit.formatted_text import FormattedText

    return FormattedText([("class:prompt", "you› " if state.prompt_format == "chat" else "› ")])


def make_session(state: ChatState, history_file: Path | None):
    from prompt_toolkit import PromptSession
    from prompt_toolkit.auto_suggest import AutoSuggestFromHistory
    from prompt_toolkit.completion import WordCompleter
    from prompt_toolkit.filters import Condition
    from prompt_toolkit.history import FileHistory, InMemoryHistory
    from prompt_toolkit.key_binding import KeyBindings
    from prompt_toolkit.styles import Style

    history, warning = InMemoryHistory(), None
    if history_file is not None:
        try:
            history_file.parent.mkdir(parents=True, exist_ok=True)
            history_file.touch()
            history = FileHistory(str(history_file))
        except OSError as e:
            warning = f"history is kept for this session only: cannot write {history_file} ({e.strerror or e})"

    keys = KeyBindings()

    @keys.add("escape", "enter")
    def _other_enter(event) -> None:
        # Esc Enter does what Enter does not: a new line in single-line mode, send in multi-line mode.
        if state.multiline:
            event.current_buffer.validate_and_handle()
        else:
            event.current_buffer.insert_text("\n")

    @keys.add("f2")
    def _toggle_multiline(event) -> None:
        state.multiline = not state.multiline

    words = [f"/{name}" for name in COMMANDS] + ["/format plain", "/format chat"]
    meta = {f"/{c.name}": f"{c.usage} {c.help}".strip() for c in COMMANDS.values()}
    session = PromptSession(
        history=history,
        auto_suggest=AutoSuggestFromHistory(),
        completer=WordCompleter(words, meta_dict=meta, sentence=True),
        complete_while_typing=True,
        multiline=Condition(lambda: state.multiline),
        key_bindings=keys,
        prompt_continuation=lambda width, line, wrap: "·".rjust(width - 1) + " ",
        bottom_toolbar=lambda: toolbar(state),
        style=Style.from_dict({"prompt": "bold ansicyan", "bottom-toolbar": "noreverse ansibrightblack"}),
    )
    return session, warning


def toolbar(state: ChatState) -> str:
    s = state.settings
    return (
        f" {state.prompt_format} · temp {s.temperature:g} · top-k {s.top_k} · top-p {s.top_p:g} · "
        f"max {s.max_new_tokens} · context {len(state.context)}/{state.window} │ {multiline_hint(state)}"
    )


def history_path() -> Path:
    """$XDG_DATA_HOME/tuilm/chat_history; the XDG spec says to ignore a relative $XDG_DATA_HOME."""
    base = os.environ.get("XDG_DATA_HOME", "")
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".local" / "share"
    return root / "tuilm" / "chat_history"
