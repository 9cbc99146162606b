"""`tuilm chat`, and the chat the dashboard hands over to when training has ended."""

from __future__ import annotations

import sys
from pathlib import Path


def chat_command(
    model_path: Path,
    temperature: float,
    top_k: int,
    top_p: float,
    max_new_tokens: int,
    seed: int | None,
    prompt_format: str,
    device: str,
    *,
    allow_nonfinite: bool = False,
    min_p: float = 0.0,
    repetition_penalty: float = 1.0,
) -> int:
    import io

    from tuilm.chat.repl import Screen, history_path, run_interactive, run_lines
    from tuilm.chat.session import ChatState, check_format
    from tuilm.checkpoint import load_checkpoint
    from tuilm.device import pick_device
    from tuilm.sampling import SamplingSettings

    settings = SamplingSettings(temperature, top_k, top_p, max_new_tokens, min_p, repetition_penalty)
    settings.validate()
    check_format(prompt_format)
    ckpt = load_checkpoint(model_path, pick_device(device), allow_nonfinite=allow_nonfinite)
    state = ChatState.from_checkpoint(ckpt, settings, prompt_format, seed)
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
    from tuilm.sampling_settings import DEFAULTS as d

    try:
        from tuilm.chat.repl import run_lines  # noqa: F401 - the front end's dependencies are importable
    except ImportError:
        print(f"chat with it: tuilm chat --model-path {model_path}")
        return 0
    return chat_command(
        model_path,
        temperature=d.temperature,
        top_k=d.top_k,
        top_p=d.top_p,
        max_new_tokens=d.max_new_tokens,
        seed=None,
        prompt_format="plain",
        device="auto",
    )
