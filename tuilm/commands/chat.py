"""`tuilm chat`, and the chat the dashboard hands over to when training has ended."""

from __future__ import annotations

import sys
from pathlib import Path


def chat_command(
    model_path: Path,
    settings,  # tuilm.sampling_settings.SamplingSettings
    seed: int | None,
    prompt_format: str,
    device: str,
    *,
    allow_nonfinite: bool = False,
) -> int:
    import io

    from tuilm.chat.repl import Screen, history_path, run_interactive, run_lines
    from tuilm.chat.state import ChatState, check_format
    from tuilm.commands.sampling import load_for_sampling

    check_format(prompt_format)
    ckpt = load_for_sampling(model_path, settings, device, allow_nonfinite)
    state = ChatState.from_checkpoint(ckpt, settings, prompt_format, seed, model_path=model_path)
    if sys.stdin.isatty() and sys.stdout.isatty():
        return run_interactive(state, Screen(sys.stdout, sys.stdout, terminal=True), history_path())
    screen = Screen(sys.stdout, sys.stderr)
    if sys.stdin.isatty():  # typing into a chat whose output goes to a pipe or file: say why there is no prompt
        screen.say("standard output is not a terminal: each line you type is a prompt; Ctrl-D ends")
    # Lines that are not UTF-8 (a Latin-1 file, say) reach the model with U+FFFD in place of the bad bytes.
    raw = getattr(sys.stdin, "buffer", None)
    lines = io.TextIOWrapper(raw, encoding="utf-8", errors="replace") if raw is not None else sys.stdin
    return run_lines(state, lines, screen)


def open_chat(model_path: Path) -> int:
    """Chat with the settings `tuilm chat` starts with; without the chat front end, say how to start it."""
    from tuilm.sampling_settings import DEFAULTS

    try:
        from tuilm.chat.repl import run_lines  # noqa: F401 - the front end's dependencies are importable
    except ImportError:
        print(f"chat with it: tuilm chat --model-path {model_path}")
        return 0
    return chat_command(model_path, settings=DEFAULTS, seed=None, prompt_format="plain", device="auto")
