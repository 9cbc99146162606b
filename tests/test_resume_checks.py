"""Issue 17, section 3's last bullet: `--resume` refuses a changed corpus and settings the checkpoint fixes, with the
reason and the way out, before config.toml is touched; the settings a resume may change still work."""

from __future__ import annotations

import pytest

from tests.conftest import SMALL_TEXT, write_corpus
from tests.helpers import TINY
from tuilm.commands.train import TrainOptions, train_command
from tuilm.errors import ConfigError, DataError

BASE = [*TINY, "sample_tokens=0", "eval_interval=1000"]


@pytest.fixture
def run(tmp_path):
    corpus = write_corpus(tmp_path, "corpus.txt")
    run_dir = tmp_path / "run"
    assert train_command(TrainOptions(source=str(corpus), overrides=BASE, headless=True, out=run_dir, steps=2)) == 0
    return run_dir, corpus


def resume(run_dir, *overrides, steps=3):
    return train_command(TrainOptions(resume=run_dir, overrides=list(overrides), headless=True, steps=steps))


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("optimizer=sgd", "train.optimizer"),
        ("d_model=64", "model.d_model"),
        ("n_layers=3", "model.n_layers"),
        ("data.vocab_size=400", "data.vocab_size"),
        ("data.tokenizer=gpt2", "data.tokenizer"),
        ("beta1=0.5", "train.beta1"),
        ("batch_size=4", "train.batch_size"),
        ("seed=7", "train.seed"),
    ],
)
def test_settings_the_checkpoint_fixes_are_refused_before_config_toml_changes(run, override, key):
    run_dir, _ = run
    before = (run_dir / "config.toml").read_bytes()
    with pytest.raises(ConfigError) as caught:
        resume(run_dir, override)
    message = str(caught.value)
    assert f"--resume cannot change {key}" in message and "--out or --name" in message and "\n" not in message
    assert (run_dir / "config.toml").read_bytes() == before


def test_a_changed_corpus_is_refused_before_config_toml_changes(run):
    run_dir, corpus = run
    before = (run_dir / "config.toml").read_bytes()
    corpus.write_text(SMALL_TEXT.replace("word1", "other"), encoding="utf-8")
    with pytest.raises(DataError) as caught:
        resume(run_dir)
    message = str(caught.value)
    assert "changed since the run was trained" in message and "restore the data" in message
    assert (run_dir / "config.toml").read_bytes() == before


def test_settings_a_resume_may_change_still_work(run):
    run_dir, _ = run
    assert resume(run_dir, "min_lr=1e-5", "lr=2e-3", "time=1h", "checkpoint_interval=7", "health.interval=3") == 0
    toml = (run_dir / "config.toml").read_text()
    assert "min_lr = 1e-05" in toml and 'time = "1h"' in toml and "max_steps = 3" in toml
