"""Issue 27, part B: the third round of bad inputs. Each probe is run as a user would and ends in one `error:` line
and exit 2, never a traceback: OS errors on a path the user named (one place: cli.main and errors.os_error_line),
values nested or sized past what a parser takes, imported model configs checked like tuilm's own settings."""

from __future__ import annotations

import errno
import functools
import itertools
import json
import math
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import run_tuilm
from tuilm.errors import CheckpointError, TuilmError, os_error_line
from tuilm.model import pretrained

LONG = "a" * 300  # one path component over the 255 bytes every common filesystem allows


def assert_one_line(out, *fragments: str) -> str:
    assert out.returncode == 2, (out.returncode, out.stdout[-500:], out.stderr[-2000:])
    assert "Traceback" not in out.stderr
    lines = [line for line in out.stderr.strip().splitlines() if line.strip() and not line.endswith("…")]
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# -- 9, 16: OS errors on a path the user named ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["data", "stats", LONG],
        ["train", LONG, "--headless"],
        ["train", "{corpus}", "--headless", "--out", f"{LONG}/run"],
        ["sample", "-m", LONG],
        ["health", LONG],
    ],
)
def test_a_name_too_long_is_one_line(small_corpus, tmp_path, args):
    args = [a.replace("{corpus}", str(small_corpus)) for a in args]
    assert_one_line(run_tuilm(*args, cwd=tmp_path), "longer than the filesystem allows (255 bytes)")


def test_vocab_train_out_names_the_users_path(small_corpus, tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_text("x")
    base = ["vocab", "train", str(small_corpus), "--size", "300", "--out"]
    assert_one_line(run_tuilm(*base, str(tmp_path / "d")), f"{tmp_path / 'd'} is a directory")
    assert_one_line(run_tuilm(*base, str(tmp_path / "f" / "x.json")), "f/x.json: a part of the path is a file")
    assert (tmp_path / "f").read_text() == "x" and not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


@given(code=st.sampled_from(["ENAMETOOLONG", "EISDIR", "ENOTDIR", "EACCES", "ENOSPC", "EROFS"]), name=st.text())
@settings(max_examples=40, deadline=None)
def test_every_os_error_on_a_path_is_one_printable_line(code, name):
    number = getattr(errno, code)
    line = os_error_line(OSError(number, "strerror", name))
    assert line is not None and "\n" not in line.replace(name[:60], "").replace(name[-40:], "")
    assert len(line) < 120 + 120 and line.encode("utf-8")  # a surrogate (a non-UTF-8 name) would fail to encode
    assert os_error_line(OSError(errno.EBADF, "bad fd")) is None  # not the user's path: a bug, keeps its trace


def test_lr_find_refuses_an_endless_range_and_a_png_that_is_not_one(small_corpus, tmp_path):
    (tmp_path / "dir.png").mkdir()
    for args, fragment in [
        (["--end", "inf"], "both finite"),
        (["--end", "nan"], "both finite"),
        (["--png", str(tmp_path / "x.safetensors")], "ending in .png"),
        (["--png", str(tmp_path)], "ending in .png"),
        (["--png", str(tmp_path / "dir.png")], "not a directory"),
    ]:
        assert_one_line(run_tuilm("lr-find", str(small_corpus), *args), fragment)
    assert not (tmp_path / "x.safetensors").exists()


# -- 10, 22: recipes and --set ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("[train]\nlr = " + "[" * 3000 + "]" * 3000, "nested too deeply"),
        ("[train]\nlr = 1" + "0" * 100_000, "a number too long"),
        ('[train]\nbatch_size = "1"', "train.batch_size must be int"),
        ("[health]\ninit_tolerance = nan", "health.init_tolerance must be a finite number > 0.0, got nan"),
        ("[health]\nentropy_floor = -1", "health.entropy_floor must be a finite number >= 0.0, got -1"),
        ("[train]\nlog_interval = 1e30", "train.log_interval must be an integer in [1, "),
    ],
)
def test_recipes_the_parser_or_the_ranges_refuse_are_one_line(tmp_path, body, fragment):
    recipe = tmp_path / "r.toml"
    recipe.write_text(body)
    assert_one_line(run_tuilm("train", str(recipe), "--headless", "--out", str(tmp_path / "run")), fragment)
    assert not (tmp_path / "run").exists()


def test_a_deep_set_is_one_line(small_corpus, tmp_path):
    deep = "[" * 3000 + "]" * 3000
    out = run_tuilm("train", str(small_corpus), "--headless", "--out", str(tmp_path / "r"), "--set", f"lr={deep}")
    assert_one_line(out, "train.lr must be float")


# -- 11, 22: an imported (--init) model's config.json ------------------------------------------------------------------

GOOD = {"vocab_size": 400, "n_positions": 64, "n_embd": 32, "n_layer": 2, "n_head": 4}


def model_dir(folder: Path, config_text: str) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(config_text)
    (folder / "model.safetensors").write_bytes(b"")
    (folder / "tokenizer.json").write_text("{}")
    return folder


JSON_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=2),
)


@given(key=st.sampled_from([*GOOD, "n_inner", "layer_norm_epsilon"]), value=JSON_VALUES)
@settings(max_examples=60, deadline=None)
def test_every_field_of_an_imported_config_is_typed_and_ranged(tmp_path_factory, key, value):
    folder = model_dir(tmp_path_factory.mktemp("m"), json.dumps({**GOOD, key: value}))
    try:
        cfg = pretrained.model_config(folder)
    except CheckpointError as e:
        assert "config.json" in str(e) or str(folder) in str(e)
        assert "\n" not in str(e)
        return
    # accepted: every number is a sane one
    assert 2 <= cfg.vocab_size <= 1_000_000 and cfg.d_model >= 1 and cfg.d_model % cfg.n_heads == 0
    if key == "layer_norm_epsilon":
        assert isinstance(value, int | float) and math.isclose(value, 1e-5)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (json.dumps({**GOOD, "vocab_size": "abc"}), "vocab_size: model.vocab_size must be int"),
        ("[1, 2]", "must be a JSON object of settings, got a list"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "n_embd"}), "no 'n_embd'"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        (json.dumps({**GOOD, "layer_norm_epsilon": math.nan}), "layer_norm_epsilon nan"),
        (json.dumps({**GOOD, "n_head": 3}), "not divisible by n_heads 3"),
    ],
)
def test_train_and_eval_init_refuse_a_bad_config_json_in_one_line(small_corpus, tmp_path, text, fragment):
    folder = model_dir(tmp_path / "m", text)
    out = run_tuilm("train", str(small_corpus), "--init", str(folder), "--headless", "--out", str(tmp_path / "r"))
    assert_one_line(out, fragment)
    assert_one_line(run_tuilm("eval", "--init", str(folder), "--data", str(small_corpus)), fragment)
    assert not (tmp_path / "r").exists()


def test_the_os_error_handler_is_only_for_os_errors():
    assert not issubclass(OSError, TuilmError)  # the two ends in main are separate: a TuilmError keeps its text


# -- 12, 23: JSONL corpora -------------------------------------------------------------------------------------------


def jsonl(path: Path, extra: str = "7") -> Path:
    lines = [json.dumps({"text": f"document {i}: " + "words and more words " * 20}) for i in range(40)]
    path.write_text("\n".join([*lines[:5], '{"text": "a huge id", "id": ' + extra + "}", *lines[5:]]) + "\n")
    return path


def test_a_huge_integer_in_a_record_is_carried_not_parsed(tmp_path, trained_run):
    corpus = jsonl(tmp_path / "c.jsonl", "1" + "0" * 100_000)
    out = run_tuilm("data", "stats", str(corpus), "--vocab-size", "300", "--seq-len", "16")
    assert out.returncode == 0 and "documents" in out.stdout and "41" in out.stdout, out.stderr
    out = run_tuilm("eval", "-m", str(trained_run), "--data", str(corpus))
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr


@given(cut=st.floats(0.01, 0.99))
@settings(max_examples=8, deadline=None)
def test_a_truncated_zst_says_it_is_cut_short(tmp_path_factory, cut):
    import zstandard

    from tuilm.data.sources import load_corpus
    from tuilm.errors import DataError

    folder = tmp_path_factory.mktemp("z")
    data = jsonl(folder / "c.jsonl").read_bytes()
    first = zstandard.ZstdCompressor().compress(data[:3000])
    whole = first + zstandard.ZstdCompressor().compress(data[3000:])
    (folder / "ok.jsonl.zst").write_bytes(whole)
    assert len(load_corpus(folder / "ok.jsonl.zst").documents) == 41  # two frames, read across
    # a cut anywhere, and one at the frame boundary: a whole zstd file whose text ends mid-record
    for end in (max(1, int(len(whole) * cut)), len(first)):
        (folder / "cut.jsonl.zst").write_bytes(whole[:end])
        with pytest.raises(DataError, match="cut short"):
            load_corpus(folder / "cut.jsonl.zst")


def test_data_stats_of_a_hub_dataset_says_what_reads_it():
    assert_one_line(run_tuilm("data", "stats", "hf:someone/nothing"), "`tuilm train hf:someone/nothing`")


# -- 13, 18, 23: text that is not UTF-8, or that a terminal would act on ------------------------------------------------

ESCAPES = "\x1b]0;PWNED\x07\x1b[2J\x9b2J"  # set the window title, clear the screen (and the 8-bit CSI)


@pytest.mark.parametrize("args", [["--set", b"sample_prompt=caf\xe9"], ["--out", b"r/caf\xe9"]])
def test_arguments_that_are_not_utf8_are_refused_at_the_door(small_corpus, tmp_path, args):
    out = run_tuilm("train", str(small_corpus), "--headless", "--steps", "1", *args, cwd=tmp_path)
    assert_one_line(out, "caf\\xe9", "is not valid UTF-8")
    assert not (tmp_path / "r").exists()


def poisoned_run(trained_run: Path, where: Path, name: str) -> Path:
    import shutil

    run = where / name
    shutil.copytree(trained_run, run)
    lines = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for key, value in record.items():
            if isinstance(value, str) and key != "event":
                record[key] = value + ESCAPES
        lines.append(json.dumps(record))
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return run


def test_an_untrusted_runs_text_reaches_no_terminal_as_escapes(metrics_run, tmp_path):
    run = poisoned_run(metrics_run, tmp_path / "runs", "evil" + ESCAPES)
    for args in (["runs", str(tmp_path / "runs")], ["health", str(run)], ["runs", str(tmp_path / "runs"), "--json"]):
        out = run_tuilm(*args)
        assert out.returncode == 0, out.stderr
        assert not {"\x1b", "\x07", "\x9b"} & set(out.stdout + out.stderr), args
    assert "evil␛]0;PWNED␇" in run_tuilm("runs", str(tmp_path / "runs")).stdout  # shown, defused


def test_headless_lines_are_defused(metrics_run, tmp_path):
    run = poisoned_run(metrics_run, tmp_path, "evil" + ESCAPES)
    out = run_tuilm("train", "--resume", str(run), "--headless", "--steps", "8")
    assert out.returncode == 0, out.stderr
    assert "saved" in out.stdout + out.stderr and not {"\x1b", "\x07", "\x9b"} & set(out.stdout + out.stderr)


def test_runs_json_is_valid_utf8_whatever_the_folder_names(metrics_run, tmp_path):
    import os
    import shutil

    (tmp_path / "runs").mkdir()
    shutil.copytree(metrics_run, tmp_path / "runs" / os.fsdecode(b"caf\xe9"))
    out = run_tuilm("runs", str(tmp_path / "runs"), "--json", text=False)
    assert out.returncode == 0, out.stderr
    document = json.loads(out.stdout.decode("utf-8"))  # strict: raises on invalid UTF-8
    assert document["runs"][0]["run"] == "caf\ufffd"


@given(text=st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]) | st.sampled_from("\x1b\x07\x9b")))
@settings(max_examples=60, deadline=None)
def test_a_metrics_line_holds_no_control_characters_once_parsed(text):
    from tuilm.train.metrics_file import parse_event

    line = json.dumps({"event": "alert", "step": 1, "code": text, "severity": "warn", "message": text})
    event = parse_event(line)
    assert event is not None
    shown = event.code + event.message
    assert not [c for c in shown if (ord(c) < 32 and c not in "\n\t") or 0x7F <= ord(c) < 0xA0]


# -- 17: sampling at the ends of its ranges ----------------------------------------------------------------------------


@given(
    temperature=st.one_of(st.floats(5e-324, 1e-30), st.sampled_from([1e-300, 1e-39, 1e-45, 5e-324])),
    top_p=st.one_of(st.just(1.0), st.floats(5e-324, 1e-30), st.sampled_from([1e-46, 1e-300])),
    scale=st.sampled_from([1.0, 1e-6, 1e6, 1e38]),
)
@settings(max_examples=60, deadline=None)
def test_a_tiny_temperature_or_top_p_is_greedy_decoding(temperature, top_p, scale):
    import torch

    from tuilm.sampling import next_token
    from tuilm.sampling_settings import SamplingSettings

    logits = torch.tensor([[0.1, 2.0, -1.0, 1.9, 0.0]]) * scale
    g = torch.Generator().manual_seed(0)
    picks = {int(next_token(logits, SamplingSettings(temperature=temperature, top_p=top_p), g)) for _ in range(20)}
    assert picks == {1}


def test_sample_and_chat_at_a_tiny_temperature_on_a_healthy_model(trained_run):
    for option in (["--temperature", "1e-39"], ["--top-p", "1e-46"], ["--temperature", "1e-300"]):
        out = run_tuilm("sample", "-m", str(trained_run), "-n", "4", "--prompt", "hi", "--seed", "1", *option)
        assert out.returncode == 0 and out.stdout, (option, out.stderr)
    out = run_tuilm("chat", "-m", str(trained_run), "-n", "3", input="/temp 1e-300\nhello\nagain\n")
    assert out.returncode == 0 and "NaN" not in out.stdout + out.stderr, out.stderr


# -- 20: a damaged checkpoint header on resume -------------------------------------------------------------------------


def damage_header(path: Path, old: str, new: str) -> None:
    """Replace text inside the safetensors header by text of the same length, as a flipped byte would."""
    data = bytearray(path.read_bytes())
    size = int.from_bytes(data[:8], "little")
    header = data[8 : 8 + size].decode()
    assert old in header and len(old) == len(new)
    data[8 : 8 + size] = header.replace(old, new, 1).encode()
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("old", "new", "fragment"),
    [
        ('\\"model\\"', '\\"mod|l\\"', "metadata is damaged (tokenizer: not a valid tokenizer file"),
        ("explode_factor", "explode_fac|or", "metadata is damaged (train_config: unknown setting"),
    ],
)
def test_a_damaged_checkpoint_on_resume_names_the_file(metrics_run, tmp_path, old, new, fragment):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(metrics_run, run)
    damage_header(run / "last.safetensors", old, new)
    out = run_tuilm("train", "--resume", str(run), "--headless", "--steps", "8")
    assert_one_line(out, f"{run / 'last.safetensors'}: ", fragment)


# -- 21: every failure exit says what happened ---------------------------------------------------------------------------

TINY_ARGS = [
    x for item in ["vocab_size=300", "seq_len=16", "d_model=32", "n_layers=1", "n_heads=2"] for x in ("--set", item)
]


def test_a_diverged_run_says_so_on_stderr(small_corpus, tmp_path):
    run = tmp_path / "run"
    args = ["--set", "lr=1e4", "--set", "grad_clip=0", "--set", "health.nonfinite=stop", "--set", "warmup_steps=1"]
    out = run_tuilm("train", str(small_corpus), "--headless", "--steps", "40", "--out", str(run), *TINY_ARGS, *args)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "training diverged (nonfinite) at step" in lines[0] and "lower lr" in lines[0], (
        out.stderr
    )


def test_wandb_without_a_key_is_refused_before_training(small_corpus, tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")} | {"HOME": str(tmp_path)}
    env["WANDB_CONFIG_DIR"] = str(tmp_path / "wandb-config")
    out = run_tuilm("train", str(small_corpus), "--headless", "--wandb", "--out", str(tmp_path / "run"), env=env)
    assert_one_line(out, "--wandb: no W&B API key", "wandb login")
    assert not (tmp_path / "run").exists()


# -- 23: a sweep into a live run; device names no machine has -------------------------------------------------------------


def test_a_sweep_never_writes_into_a_run_being_trained(small_corpus, tmp_path):
    from tuilm.runlock import RunLock

    run = tmp_path / "run"
    run.mkdir()
    with RunLock(run):  # this process trains there, as far as any other can tell
        args = ["sweep", str(small_corpus), "--grid", "lr=1e-3,2e-3", "--budget", "2", "--out", str(run), *TINY_ARGS]
        assert_one_line(run_tuilm(*args), str(os.getpid()))
    assert sorted(p.name for p in run.iterdir()) == [".lock"]


@pytest.mark.parametrize("device", ["cpu:1", "", "mps:0", "gpu", "cuda:x"])
def test_device_names_no_machine_has_are_refused(small_corpus, tmp_path, trained_run, device):
    out = run_tuilm("train", str(small_corpus), "--headless", "--device", device, "--out", str(tmp_path / "r"))
    assert_one_line(out, f"'{device}' is not a device")
    assert not (tmp_path / "r").exists()
    assert_one_line(run_tuilm("sample", "-m", str(trained_run), "--device", device), f"'{device}' is not a device")


# -- 24: memory ------------------------------------------------------------------------------------------------------------


def test_a_corpus_too_large_for_memory_is_refused_with_the_numbers():
    from tuilm.data.tokenizer import MEMORY_PER_CHAR, check_memory
    from tuilm.errors import DataError

    check_memory("c.txt", 10**6, available=MEMORY_PER_CHAR * 10**6)
    with pytest.raises(DataError, match=r"c\.txt: 50M characters need about 0\.7 GiB .* 0\.5 GiB is available"):
        check_memory("c.txt", 50 * 10**6, available=2**29)


@given(
    words=st.lists(st.text(alphabet="ab \n\t.,'é", min_size=0, max_size=12), min_size=1, max_size=300),
    limit=st.integers(4, 64),
)
@settings(max_examples=40, deadline=None)
def test_encoding_in_pieces_gives_the_ids_of_the_whole(words, limit):
    import numpy as np

    from tuilm.data import pipeline, tokenizer

    tok, text = byte_bpe(), " ".join(words)
    texts = [text, "x", ""]
    old = tokenizer.ENCODE_CHARS, pipeline.ENCODE_CHARS
    tokenizer.ENCODE_CHARS = pipeline.ENCODE_CHARS = limit
    try:
        pieces = tokenizer.pieces(text)
        docs = pipeline.encode_docs(tok, texts)
    finally:
        tokenizer.ENCODE_CHARS, pipeline.ENCODE_CHARS = old
    assert "".join(pieces) == text and all(len(p) <= limit for p in pieces[:-1])
    at_pre_tokens = all(
        p[0] == " " and len(p) > 1 and not p[1].isspace() and not before[-1].isspace()
        for before, p in itertools.pairwise(pieces)
    )
    if at_pre_tokens:  # (otherwise no such spot was within reach: the rare cut anywhere)
        whole = pipeline.tokenize(tok.encode_batch(texts), texts, tok.eos_id)
        assert np.array_equal(docs.stream, whole.stream) and np.array_equal(docs.bounds, whole.bounds)


@functools.cache
def byte_bpe():
    from tuilm.data.tokenizer import TokenizerSettings, train_tokenizer

    return train_tokenizer(["ab ba abba, a.b 'é'\n\tba ab"] * 50, TokenizerSettings(300))
