"""The command line as a user meets it: help, start-up cost, and one clear line for bad input."""

import subprocess
import sys

import pytest

from tests.helpers import run_tuilm as tuilm

COMMANDS = [
    ["train"],
    ["chat"],
    ["sample"],
    ["eval"],
    ["data", "stats"],
    ["vocab", "train"],
    ["health"],
    ["watch"],
    ["sweep"],
    ["runs"],
    ["compare"],
    ["recipes"],
]


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_help_and_version_do_not_import_torch(flag):
    code = (
        "import sys\n"
        "from tuilm.cli import app\n"
        "try:\n"
        f"    app([{flag!r}])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_version():
    from tuilm import __version__

    out = tuilm("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"tuilm {__version__}"


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c))
def test_every_command_has_real_help(command):
    from typer.testing import CliRunner

    from tuilm.cli import app

    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    # A sentence of description, not just the option list.
    description = result.output.split("Usage:")[1].split("\n", 2)[2]
    assert len(description.strip().split("\n")[0]) > 20


def assert_one_line_error(out, *fragments):
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    # Progress notes ("training a tokenizer…") may come first; the error itself is one line, the last.
    lines = [line for line in out.stderr.strip().splitlines() if line.strip() and not line.endswith("…")]
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_data_stats_on_a_missing_path(tmp_path):
    assert_one_line_error(tuilm("data", "stats", str(tmp_path / "nope.txt")), "no such file or directory")


def test_data_stats_on_a_binary_file(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"\x93NUMPY\x00\x01")
    assert_one_line_error(tuilm("data", "stats", str(path)), "binary", "offset 6")


def test_data_stats_non_utf8(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes("na\xefve\n\ncaf\xe9".encode("latin-1"))
    assert_one_line_error(tuilm("data", "stats", str(path)), "not UTF-8", "offset 2")


def test_data_stats_empty_file_and_empty_dir(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    assert_one_line_error(tuilm("data", "stats", str(tmp_path / "empty.txt")), "empty")
    (tmp_path / "d").mkdir()
    assert_one_line_error(tuilm("data", "stats", str(tmp_path / "d")), "no .txt files")


def test_vocab_train_impossible_size(small_corpus):
    assert_one_line_error(tuilm("vocab", "train", str(small_corpus), "--size", "100"), "vocab size 100 is impossible")


def test_vocab_train_writes_a_tokenizer(small_corpus, tmp_path):
    from tuilm.data.tokenizer import Tokenizer

    out = tmp_path / "tok.json"
    result = tuilm("vocab", "train", str(small_corpus), "--size", "300", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout
    tokenizer = Tokenizer.from_file(out)
    assert tokenizer.decode(tokenizer.encode("SPEAKER 3: word1")) == "SPEAKER 3: word1"


def test_data_stats_prints_distribution_and_policy_table(small_corpus):
    out = tuilm("data", "stats", str(small_corpus), "--vocab-size", "300", "--seq-len", "16")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for fragment in ("documents", "60", "characters per token", "p50", "p99", "seq_len"):
        assert fragment in text
    for policy in ("pack", "pad", "pad-overflow", "bucket"):
        assert f"│ {policy} " in text
    assert "kept %" in text and "padding %" in text


def test_data_stats_tiny_shakespeare(shakespeare_path):
    out = tuilm("data", "stats", "tiny_shakespeare", "--seq-len", "128")
    assert out.returncode == 0, out.stderr
    assert "7,222" in out.stdout and "1,100,949" in out.stdout
    assert "bucket" in out.stdout


def test_train_corpus_too_small(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("a b\n\nc d\n")
    out = tuilm("train", str(path), "--headless", "--set", "vocab_size=260", "--out", str(tmp_path / "run"))
    assert_one_line_error(out, "too small for one sequence")


def test_train_unknown_recipe_and_bad_override(small_corpus, tmp_path):
    assert_one_line_error(tuilm("train", "tiny_shakespere", "--headless"), "did you mean 'tiny_shakespeare'")
    out = tuilm("train", str(small_corpus), "--headless", "--set", "n_layer=2")
    assert_one_line_error(out, "unknown setting 'n_layer'", "n_layers")
    out = tuilm("train", str(small_corpus), "--headless", "--set", "d_model=128", "--set", "n_heads=6")
    assert_one_line_error(out, "not divisible")
    out = tuilm("train", str(small_corpus), "--headless", "--set", "lr")
    assert_one_line_error(out, "key=value")
