"""The `tuilm` command line. Imports stay inside commands so `tuilm --help` starts without loading torch."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from tuilm import __version__
from tuilm.errors import ConfigError, TuilmError, os_error_line, print_error
from tuilm.sampling_settings import DEFAULTS

app = typer.Typer(
    name="tuilm",
    help="Train small BPE language models and watch them learn, live in the terminal.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
data_app = typer.Typer(help="Inspect training data.", no_args_is_help=True)
vocab_app = typer.Typer(help="Train BPE tokenizers.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(vocab_app, name="vocab")

MODEL_HELP = "A .safetensors checkpoint, a run directory (its best checkpoint), RUN@STEP or a transformers model dir."
ModelPath = Annotated[Path, typer.Option("--model-path", "-m", help=MODEL_HELP)]
Temperature = Annotated[float, typer.Option("--temperature", "-t", help="Sampling temperature; 0 is greedy.")]
TopK = Annotated[int, typer.Option("--top-k", help="Sample among the K most likely tokens; 0 for all.")]
TopP = Annotated[float, typer.Option("--top-p", help="Sample among the most likely tokens holding P of the mass.")]
MinP = Annotated[float, typer.Option("--min-p", help="Drop tokens less likely than P times the likeliest; 0: off.")]
RepetitionPenalty = Annotated[
    float, typer.Option("--repetition-penalty", help="Divide the logits of tokens already in the context; 1: off.")
]
Seed = Annotated[int | None, typer.Option("--seed", help="Random seed for reproducible samples.")]
Stop = Annotated[
    list[str] | None,
    typer.Option("--stop", help="End at the first TEXT (not printed); repeatable; \\n is a newline.", metavar="TEXT"),
]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
Notify = Annotated[
    str | None,
    typer.Option(
        "--notify",
        help="Shell command run once when a run finishes, fails, dies, alerts or reaches --target; "
        "the event as JSON on its stdin (docs/board.md).",
    ),
]
Target = Annotated[
    str | None,
    typer.Option(
        "--target", help="With --notify: a val bits/char as for train (1.6 or bpc=1.6), step=5000 or tokens=1e8."
    ),
]
Json = Annotated[
    bool, typer.Option("--json", help="One JSON document on stdout instead of tables (docs/scripting.md).")
]
AllowNonfinite = Annotated[
    bool, typer.Option("--allow-nonfinite", help="Load weights holding NaN/Inf anyway (a diverged run's post-mortem).")
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tuilm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", "-V", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Train small BPE language models and watch them learn, live in the terminal.

    Start with `tuilm train tiny_shakespeare`, then `tuilm chat --model-path runs/<run>`.
    """


@app.command()
def train(
    source: Annotated[
        str | None,
        typer.Argument(
            help="A recipe name (see `tuilm recipes`), a recipe .toml file, a dataset name, or a data path "
            "(.txt, .jsonl, .jsonl.zst, or a directory of .txt files).",
            show_default=False,
        ),
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Override a setting, e.g. --set train.lr=3e-4 --set d_model=256."),
    ] = None,
    headless: Annotated[bool, typer.Option("--headless", help="No dashboard: a progress bar or log lines.")] = False,
    resume: Annotated[
        Path | None, typer.Option("--resume", help="Continue the run in this directory from its last checkpoint.")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Run directory (default runs/<recipe>-<time>).")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Run name: the run directory becomes runs/<name>.")] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")] = None,
    time: Annotated[str | None, typer.Option("--time", help="Wall-clock training budget, e.g. 90s, 10m, 1h.")] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Stop after this many optimizer steps.")] = None,
    target: Annotated[
        str | None,
        typer.Option(
            "--target",
            help="Record when val bits/char first gets under this (loss=1.5: val loss; bpb=: bits/byte): step, "
            "tokens, seconds, FLOPs. train.stop_at_target=true ends the run there.",
        ),
    ] = None,
    compile: Annotated[
        bool | None,
        typer.Option("--compile/--no-compile", help="torch.compile the model (default: on for CUDA, off elsewhere)."),
    ] = None,
    wandb: Annotated[bool, typer.Option("--wandb", help="Also log to Weights & Biases.")] = False,
    wandb_project: Annotated[str, typer.Option("--wandb-project", help="wandb project.")] = "tuilm",
    wandb_name: Annotated[str | None, typer.Option("--wandb-name", help="wandb run name.")] = None,
    tensorboard: Annotated[
        bool, typer.Option("--tensorboard", help="Also write TensorBoard event files to <run>/tensorboard.")
    ] = False,
    compare: Annotated[
        Path | None,
        typer.Option("--compare", help="Overlay this other run's loss and val curves (the dashboard's c key)."),
    ] = None,
    init: Annotated[
        str | None,
        typer.Option(
            "--init",
            help="Start from pre-trained GPT-2 (gpt2, gpt2-medium, -large, -xl) or a GPT-2/Llama/Qwen3 HF dir.",
        ),
    ] = None,
    nproc: Annotated[
        int, typer.Option("--nproc", help="Data-parallel ranks on this machine (launches torch.distributed.run).")
    ] = 1,
) -> None:
    """Train a model: a live dashboard in a terminal, a progress bar otherwise (or with --headless).

    Checkpoints go to the run directory: last.safetensors, best.safetensors and train_state.safetensors,
    with metrics.jsonl beside them. Keys in the dashboard: p pause, s save, g sample, e evaluate, q quit.
    """
    options = dict(locals())  # every option by its name: TrainOptions has one field per option
    from tuilm.commands.train import TrainOptions, train_command

    options["overrides"] = list(overrides or [])
    raise typer.Exit(train_command(TrainOptions(**options)))


@app.command()
def recipes(as_json: Json = False) -> None:
    """List the named recipes shipped in baseline/."""
    from tuilm.commands.train import list_recipes

    list_recipes(as_json)


@app.command("lr-find")
def lr_find(
    recipe: Annotated[str, typer.Argument(help="Recipe name, .toml file or data path, as for `tuilm train`.")],
    overrides: Annotated[
        list[str] | None, typer.Option("--set", "-s", help="Override a setting, as for train.")
    ] = None,
    start: Annotated[float, typer.Option("--start", help="First learning rate.")] = 1e-6,
    end: Annotated[
        float, typer.Option("--end", help="Last learning rate (the test stops earlier on divergence).")
    ] = 1.0,
    steps: Annotated[int, typer.Option("--steps", help="Steps from --start to --end.")] = 300,
    png: Annotated[Path | None, typer.Option("--png", help="Also write the plot here (needs tuilm[plot]).")] = None,
    rule: Annotated[str, typer.Option("--rule", help="min/10 (a tenth of the minimum's lr) or steepest.")] = "min/10",
) -> None:
    """The learning-rate range test: loss against an exponentially growing lr, and a suggested lr."""
    from tuilm.commands.lrfind import lrfind_command

    lrfind_command(recipe, list(overrides or []), start=start, end=end, steps=steps, png=png, rule=rule)


@app.command()
def overfit(
    recipe: Annotated[str, typer.Argument(help="Recipe name, .toml file or data path, as for `tuilm train`.")],
    overrides: Annotated[
        list[str] | None, typer.Option("--set", "-s", help="Override a setting, as for train.")
    ] = None,
    steps: Annotated[int, typer.Option("--steps", help="At most this many steps on the batch.")] = 200,
    target: Annotated[
        str | None,
        typer.Option(
            "--target",
            help="Pass under this loss (nats/token; loss=X says the same); default the larger of 0.05 and 1% of "
            "ln(vocab). train's --target has the same meaning, a value to get under, on the val split.",
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Keep the overfitted model: DIR/last.safetensors (default: none).")
    ] = None,
    as_json: Json = False,
) -> None:
    """Overfit one batch, the first check of Karpathy's recipe for training neural networks: train on the first
    training batch alone until its loss is ~0. PASS (exit 0) says the model, loss and optimizer can learn;
    FAIL (exit 1) names the likely causes (lr too low or too high, a bug in the loss or labels, too small a
    model). No evaluation, nothing written unless --out."""
    from tuilm.commands.overfit import overfit_command

    code = overfit_command(recipe, list(overrides or []), steps=steps, target=target, out=out, as_json=as_json)
    raise typer.Exit(code)


@app.command()
def sample(
    model_path: ModelPath,
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="Text to continue; - reads standard input.")] = "",
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", "-n", help="Tokens to generate.")
    ] = DEFAULTS.max_new_tokens,
    temperature: Temperature = DEFAULTS.temperature,
    top_k: TopK = DEFAULTS.top_k,
    top_p: TopP = DEFAULTS.top_p,
    min_p: MinP = DEFAULTS.min_p,
    repetition_penalty: RepetitionPenalty = DEFAULTS.repetition_penalty,
    stop: Stop = None,
    seed: Seed = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Recompute the whole context for every token.")] = False,
    truncate: Annotated[
        bool, typer.Option("--truncate", help="Keep the end of a prompt longer than the context window.")
    ] = False,
    device: Device = "auto",
    allow_nonfinite: AllowNonfinite = False,
) -> None:
    """Print a completion of a prompt (streamed as it is sampled)."""
    from tuilm.commands.sample import sample_command
    from tuilm.commands.sampling import sampling_settings

    settings = sampling_settings(temperature, top_k, top_p, max_new_tokens, min_p, repetition_penalty, stop)
    sample_command(model_path, prompt, settings, seed, not no_cache, device, truncate, allow_nonfinite)


@app.command(name="eval")
def eval_(
    model_path: Annotated[Path | None, typer.Option("--model-path", "-m", help=MODEL_HELP)] = None,
    data: Annotated[
        str | None,
        typer.Option("--data", "-d", help="Evaluate on this text (all of it); default: the run's own val split."),
    ] = None,
    device: Device = "auto",
    allow_nonfinite: AllowNonfinite = False,
    init: Annotated[
        str | None, typer.Option("--init", help="Score pre-trained GPT-2 (gpt2, ..., or a HF dir) instead.")
    ] = None,
    stride: Annotated[
        int, typer.Option("--stride", help="Sliding windows every STRIDE tokens (HF's perplexity method); 0: off.")
    ] = 0,
    as_json: Json = False,
) -> None:
    """Print validation loss, perplexity and bits per character."""
    from tuilm.commands.eval import eval_or_sliding

    eval_or_sliding(model_path, data, device, init, stride, allow_nonfinite=allow_nonfinite, as_json=as_json)


@app.command()
def chat(
    model_path: ModelPath,
    temperature: Temperature = DEFAULTS.temperature,
    top_k: TopK = DEFAULTS.top_k,
    top_p: TopP = DEFAULTS.top_p,
    min_p: MinP = DEFAULTS.min_p,
    repetition_penalty: RepetitionPenalty = DEFAULTS.repetition_penalty,
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", "-n", help="Tokens per reply.")
    ] = DEFAULTS.max_new_tokens,
    stop: Stop = None,
    seed: Seed = None,
    prompt_format: Annotated[
        str, typer.Option("--format", help="plain: continue the text; chat: turns separated by end-of-sequence.")
    ] = "plain",
    device: Device = "auto",
    allow_nonfinite: AllowNonfinite = False,
) -> None:
    """Talk to a checkpoint in a REPL that streams replies. /help lists the commands.

    With standard input not a terminal, each input line is a prompt and each reply is printed.
    """
    from tuilm.commands.chat import chat_command
    from tuilm.commands.sampling import sampling_settings

    settings = sampling_settings(temperature, top_k, top_p, max_new_tokens, min_p, repetition_penalty, stop)
    code = chat_command(model_path, settings, seed, prompt_format, device, allow_nonfinite=allow_nonfinite)
    raise typer.Exit(code)


@app.command()
def health(
    run: Annotated[Path, typer.Argument(help="A run directory (with metrics.jsonl).")], as_json: Json = False
) -> None:
    """Summarise a run's gradient health: per-layer table with sparklines, and every alert raised."""
    from tuilm.commands.health import health_command

    health_command(run, as_json)


@app.command()
def watch(
    run: Annotated[Path, typer.Argument(help="A run directory being written by another process.")],
    compare: Annotated[
        Path | None, typer.Option("--compare", help="Overlay this other run's loss and val curves.")
    ] = None,
    notify: Notify = None,
    target: Target = None,
) -> None:
    """Follow a run written by another process in the dashboard (read-only)."""
    from tuilm.commands.watch import watch_command

    raise typer.Exit(watch_command(run, compare, notify, target))


@app.command()
def board(
    folders: Annotated[
        list[Path] | None, typer.Argument(help="Folders of runs, searched recursively (default runs/).")
    ] = None,
    as_json: Json = False,
    notify: Notify = None,
    target: Target = None,
) -> None:
    """Every run under the folders in one live table; pick runs (space) to overlay their curves."""
    from tuilm.commands.board import board_command

    raise typer.Exit(board_command(list(folders or []), as_json, notify, target))


@app.command()
def sweep(
    recipe: Annotated[str, typer.Argument(help="Recipe name, .toml file or data path, as for `tuilm train`.")],
    grid: Annotated[
        list[str] | None,
        typer.Option("--grid", "-g", help="key=v1,v2,... ; repeat for a grid over several keys."),
    ] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", "-s", help="Fixed override for every run.")] = None,
    budget: Annotated[
        str | None,
        typer.Option("--budget", help="Per-run budget: steps (e.g. 500), tokens (e.g. 2M tokens) or time (e.g. 60s)."),
    ] = None,
    seeds: Annotated[int, typer.Option("--seeds", help="Repeat every configuration with this many seeds.")] = 1,
    out: Annotated[Path | None, typer.Option("--out", help="Sweep directory (default runs/<name>).")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Sweep name (default <recipe>-sweep-<keys>).")] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")] = None,
) -> None:
    """Train every combination of a grid; write results.csv, results.md and plots."""
    from tuilm.commands.sweep import sweep_command

    raise typer.Exit(sweep_command(recipe, list(grid or []), list(overrides or []), budget, seeds, out, name, device))


@app.command()
def runs(
    folder: Annotated[Path, typer.Argument(help="Folder of runs (searched recursively).")] = Path("runs"),
    as_json: Json = False,
) -> None:
    """List runs: name, recipe, steps, best val loss, bits/char and status (running, dead, completed, ...)."""
    from tuilm.commands.runs import runs_command

    runs_command(folder, as_json)


@app.command()
def compare(
    run_dirs: Annotated[
        list[Path],
        typer.Argument(help="Two or more run directories; or two groups, A1 A2 ... vs B1 B2 ... (folders, globs)."),
    ],
    metric: Annotated[str, typer.Option("--metric", help="Groups: bpc (best val bits/char) or loss.")] = "bpc",
    alternative: Annotated[
        str,
        typer.Option("--alternative", help="Groups: two-sided, less (B lower than A) or greater: Welch's t-test."),
    ] = "two-sided",
    confidence: Annotated[float, typer.Option("--confidence", help="Groups: of the interval of B - A.")] = 0.95,
    as_json: Json = False,
) -> None:
    """Show config differences side by side and overlay the runs' learning curves.

    With `vs` between two groups of runs (seeds of two configurations; a sweep folder stands for its runs), print
    each group's mean, standard deviation and n, and B - A with a confidence interval and Welch's t-test.
    """
    from tuilm.commands.groups import compare_runs_or_groups

    compare_runs_or_groups(run_dirs, metric, alternative, confidence, as_json)


@app.command()
def export(
    model: Annotated[
        Path, typer.Argument(help="A run directory (its best checkpoint), a .safetensors checkpoint or RUN@STEP.")
    ],
    to: Annotated[str, typer.Option("--to", help="hf: a transformers directory; gguf: a llama.cpp file.")],
    out: Annotated[Path, typer.Argument(help="The directory (hf) or file (gguf) to create; must not exist.")],
    dtype: Annotated[str, typer.Option("--dtype", help="gguf weights: f32, f16, bf16 or q8_0.")] = "f32",
    device: Device = "cpu",
    as_json: Json = False,
) -> None:
    """Export a model for transformers (--to hf DIR) or llama.cpp (--to gguf FILE); docs/export.md.

    The hf directory is written only after transformers, loading it, scores the run's val text at the same
    bits/char as tuilm (to 1e-4; exit 1 and nothing written otherwise).
    """
    from tuilm.commands.export import export_command

    export_command(model, to, out, dtype=dtype, device=device, as_json=as_json)


@data_app.command("stats")
def data_stats(
    data: Annotated[str, typer.Argument(help="A dataset name or a data path.")],
    vocab_size: Annotated[int, typer.Option("--vocab-size", help="BPE vocabulary size.")] = 10_000,
    seq_len: Annotated[int, typer.Option("--seq-len", help="Sequence length the policies are compared at.")] = 128,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Batch size for bucket's padding figure.")] = 32,
    as_json: Json = False,
) -> None:
    """Documents, characters, tokens, the length distribution, and what each sequence policy keeps."""
    from tuilm.commands.data import stats_command

    stats_command(data, vocab_size, seq_len, batch_size, as_json)


@data_app.command("list")
def data_list() -> None:
    """The named corpora: size, split, license, source URL and checksum (downloaded on first use)."""
    from tuilm.commands.data import list_command

    list_command()


@vocab_app.command("train")
def vocab_train(
    data: Annotated[str, typer.Argument(help="A dataset name or a data path.")],
    size: Annotated[int, typer.Option("--size", help="Vocabulary size, special tokens included.")] = 10_000,
    out: Annotated[Path | None, typer.Option("--out", help="Write the tokenizer JSON here.")] = None,
) -> None:
    """Train (or fetch from the cache) a byte-level BPE tokenizer."""
    from tuilm.commands.vocab import vocab_train_command

    vocab_train_command(data, size, out)


def main() -> None:
    try:
        check_utf8(sys.argv[1:])
        app()
    except TuilmError as e:
        print_error(str(e))
        sys.exit(e.exit_code)
    except OSError as e:
        # a path the user named that the OS refuses (too long, a directory, read-only, full): one line, exit 2
        line = os_error_line(e)
        if line is None:
            raise
        print_error(line)
        sys.exit(2)
    except SystemExit as e:
        if e.code == 130:
            _quit_at_once()
        raise


PROMPT_OPTIONS = ("-p", "--prompt")  # text for the model: carried as U+FFFD with a note (formatting.valid_text)


def check_utf8(args: list[str]) -> None:
    """The text boundary: every argument (settings, paths) must be UTF-8. Python hands undecodable bytes on as lone
    surrogates, which pass for text until the first write fails far from here (a config.toml, a run name, a
    checkpoint's metadata), so they are refused at the door, naming the bytes. A prompt alone is carried: it is
    only ever text for the model, and `sample` says what it replaced."""
    for before, arg in zip(["", *args], args, strict=False):
        if before in PROMPT_OPTIONS or arg.startswith(tuple(f"{o}=" for o in PROMPT_OPTIONS)):
            continue
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            import os

            shown = os.fsencode(arg).decode("utf-8", "backslashreplace")
            raise ConfigError(
                f"argument '{shown[:80]}' is not valid UTF-8; tuilm takes UTF-8 text and file names: re-type it, "
                "or rename the file (e.g. convmv -t utf-8)"
            ) from None


def _quit_at_once() -> None:
    """Exit 130 (Ctrl-C) without the interpreter's shutdown: after a second Ctrl-C cut a step short, torch's
    static destructors abort it in C++ ("terminate called without an active exception", exit 134). Every file
    is written atomically and metrics.jsonl unbuffered, so nothing is left to flush but the terminal."""
    import os

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)
