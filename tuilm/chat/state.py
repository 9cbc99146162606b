"""The state of a chat and one exchange in it, with no terminal in sight (the REPL only reads and writes text).

The context is the token list the model sees next, never longer than its window. `plain` appends the user's text
to it verbatim and lets the model continue. `chat` makes every turn a document as training saw them:
`eos you eos model eos you eos ...`, so the model's reply is the next document and ends at its eos.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

import torch

from tuilm.errors import ConfigError
from tuilm.sampling import SamplingSettings, generate, make_generator
from tuilm.stop_strings import Piece, StopFilter

MAX_TURNS = 100  # exchanges /undo and /regen can go back over

FORMATS = {
    "plain": "your text is appended to the running text as typed, and the model continues it",
    "chat": "turns separated by end-of-sequence, as documents were in training; a reply ends at its eos",
}


def check_format(name: str) -> str:
    if name not in FORMATS:
        raise ConfigError(f"unknown prompt format '{name}'; use plain or chat")
    return name


@dataclass
class ChatState:
    model: Any  # tuilm.model.GPT in eval mode
    tokenizer: Any  # tuilm.data.tokenizer.Tokenizer
    settings: SamplingSettings = field(default_factory=SamplingSettings)
    prompt_format: str = "plain"
    seed: int | None = None
    source: str = ""  # the checkpoint, as shown to the user
    meta: dict = field(default_factory=dict)  # the checkpoint's training metadata (step, val loss, ...)
    context: list[int] = field(default_factory=list)
    transcript: list[tuple[str, str]] = field(default_factory=list)  # (you | model | note, text)
    multiline: bool = False
    generator: torch.Generator | None = None
    show_probs: bool = False  # /probs: each reply's tokens marked, as they stream, by their probability
    turns: list[Turn] = field(default_factory=list)  # the exchanges since the start, /reset or /load, newest last
    watch: Any = None  # tuilm.chat.reload.BestWatch when the run directory is still training

    def __post_init__(self) -> None:
        check_format(self.prompt_format)
        if not self.context:
            self.context = [self.tokenizer.eos_id]
        self.reseed(self.seed)

    @classmethod
    def from_checkpoint(
        cls, ckpt, settings: SamplingSettings, prompt_format: str, seed: int | None, model_path=None
    ) -> ChatState:
        """`model_path`, as the user gave it: a run directory still training is watched for a newer best."""
        from tuilm.chat.reload import watch_if_training

        state = cls(ckpt.model, ckpt.tokenizer, settings, prompt_format, seed, source=str(ckpt.path), meta=ckpt.meta)
        state.watch = watch_if_training(model_path, ckpt.path) if model_path is not None else None
        return state

    @property
    def window(self) -> int:
        return self.model.cfg.seq_len

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def reseed(self, seed: int | None) -> None:
        # A fresh generator per /seed, so the same seed after the same prompts gives the same replies.
        try:
            self.generator = make_generator(seed, self.device)
        except (ValueError, RuntimeError):  # torch seeds are 64-bit
            raise ConfigError(f"seed {seed} does not fit in 64 bits; use a smaller one") from None
        self.seed = seed

    def reset(self) -> None:
        self.context = [self.tokenizer.eos_id]
        self.turns.clear()

    def note(self, text: str) -> None:
        self.transcript.append(("note", text))


@dataclass(frozen=True)
class Turn:
    prompt: str
    before: list[int]  # the context before the prompt went in: what /undo and /regen go back to


@dataclass
class Reply:
    text: str
    ids: list[int]
    interrupted: bool = False
    ended: bool = False  # the model closed its turn with eos (chat format)
    stopped: bool = False  # it reached a stop string (not part of `text`)
    notices: list[str] = field(default_factory=list)  # to show after the reply, not inside its text
    seconds: float = 0.0  # from the request to the last token
    first_token_s: float | None = None  # time to the first token (prompt processing included)
    context: list[int] = field(default_factory=list)  # what the reply was sampled from

    @property
    def tokens_per_s(self) -> float | None:
        return len(self.ids) / self.seconds if self.ids and self.seconds > 0 else None


def build_context(state: ChatState, prompt: str) -> tuple[list[int], list[str]]:
    """The context to sample the reply from, at most the window, and notices for whatever had to be dropped."""
    eos, window = state.tokenizer.eos_id, state.window
    prompt_ids = state.tokenizer.encode(prompt)
    base = list(state.context)
    if state.prompt_format == "chat":
        if not base or base[-1] != eos:  # a turn cut short (or plain text before /format chat) ends here
            base.append(eos)
        new = [*prompt_ids, eos]
    else:
        new = prompt_ids
    full = base + new
    notices = []
    if len(full) > window:
        separators = len(new) - len(prompt_ids)
        kept = window - separators
        if len(prompt_ids) > kept:
            earlier = " (and the conversation before it)" if len(base) > 1 else ""
            notices.append(
                f"the prompt is {len(prompt_ids)} tokens, more than the {window}-token context window holds: "
                f"its first {_were(len(prompt_ids) - kept)} cut{earlier}"
            )
        else:
            notices.append(overflow_notice(len(full) - window, window))
        full = full[-window:]
    return full, notices


def overflow_notice(dropped: int, window: int) -> str:
    return f"the conversation outgrew the {window}-token context window: its oldest {_were(dropped)} dropped"


def _were(n: int) -> str:
    return f"{n} token was" if n == 1 else f"{n} tokens were"


Marked = Callable[[str, float, bool], None]  # (text, the probability of its token, whether it ends that token)


def respond(
    state: ChatState,
    prompt: str,
    write: Callable[[str], None],
    notice: Callable[[str], None] = lambda _: None,
    marked: Marked | None = None,
) -> Reply:
    """Sample a reply to `prompt`, writing its text as it arrives; Ctrl-C (KeyboardInterrupt) ends it early.

    `notice` hears, before the reply starts, what had to be cut to fit the window; what the reply itself pushed
    out is in `Reply.notices`. With `marked`, the text goes there instead of to `write`, each piece with the
    probability the model gave its token (for /probs). A stop string ends the reply and is never written.

    Whatever was sampled before an interruption stays in the conversation, since the user has seen it.
    """
    started = time.perf_counter()
    before = list(state.context)
    context, notices = build_context(state, prompt)
    for text in notices:
        notice(text)
    chat = state.prompt_format == "chat"
    eos = state.tokenizer.eos_id
    state.transcript.append(("you", prompt))
    decoder, stops = state.tokenizer.stream_decoder(), StopFilter(state.settings.stop)
    ids: list[int] = []
    probs: list[float] = []
    chunks: list[str] = []
    reply = Reply("", ids, context=list(context))

    def show(pieces: list[Piece]) -> None:
        text = "".join(p.text for p in pieces)
        chunks.append(text)
        if marked is not None:
            for piece in pieces:
                marked(piece.text, piece.tag, piece.last)
        elif text:
            write(text)

    stop = (eos,) if chat else ()
    heard = probs if marked is not None else None  # the probabilities cost a softmax a token: only when shown
    sampled = generate(state.model, context, state.settings, generator=state.generator, stop_ids=stop, probs=heard)
    try:
        with closing(sampled) as it:
            for token in it:
                if not ids:
                    reply.first_token_s = time.perf_counter() - started
                ids.append(token)
                if chat and token == eos:
                    reply.ended = True
                    break
                show(stops.feed(decoder.feed(token), probs[-1] if probs else None))
                if stops.stopped:
                    reply.stopped = True
                    break
        show(stops.feed(decoder.flush()) + stops.flush())
    except KeyboardInterrupt:
        reply.interrupted = True
        # kept in the transcript, not written: the user asked for quiet
        chunks.extend(p.text for p in stops.feed(decoder.flush()) + stops.flush())
    reply.text = "".join(chunks)
    reply.seconds = time.perf_counter() - started

    kept = shown_ids(state.tokenizer, ids, reply.text) if reply.stopped else ids
    context = context + kept
    if chat and context[-1] != eos:
        context.append(eos)
    if len(context) > state.window:
        reply.notices.append(overflow_notice(len(context) - state.window, state.window))
        context = context[-state.window :]
    state.context = context
    state.turns[:] = [*state.turns[-(MAX_TURNS - 1) :], Turn(prompt, before)]
    state.transcript.append(("model", reply.text))
    if reply.interrupted:
        state.note("interrupted")
    return reply


def shown_ids(tokenizer, ids: list[int], text: str) -> list[int]:
    """The tokens of a reply cut short at a stop string: those whose text was shown whole, then the shown rest
    of the token the stop string began in, encoded anew. The stop string leaves the conversation with it."""
    kept = 0
    while kept < len(ids) and len(tokenizer.decode(ids[: kept + 1])) <= len(text):
        kept += 1
    rest = text[len(tokenizer.decode(ids[:kept])) :]
    return ids[:kept] + (tokenizer.encode(rest) if rest else [])


@torch.no_grad()
def next_token_probs(state: ChatState, context: list[int]) -> torch.Tensor:
    """The model's distribution over the next token after `context` (its last window), at temperature 1."""
    ids = torch.tensor([context[-state.window :]], device=state.device)
    return torch.softmax(state.model(ids)[0, -1].float(), dim=-1)
