"""hf:<name>[:<config>][@<split>] sources (issue 15), against local datasets built with `datasets` (no network)."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

datasets = pytest.importorskip("datasets")

from tests.helpers import run_tuilm  # noqa: E402
from tuilm.config import from_dict  # noqa: E402
from tuilm.data.dataset import prepare  # noqa: E402
from tuilm.data.hf import parse  # noqa: E402
from tuilm.errors import DataError  # noqa: E402

TRAIN = [f"Row {i} tells of w{i % 7} and w{(i * 3) % 11}." for i in range(120)]
VAL = [f"Held out {i}: w{i % 5}." for i in range(15)]


@pytest.fixture
def saved(tmp_path):
    folder = tmp_path / "ds"
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"body": TRAIN, "n": list(range(len(TRAIN)))}),
            "validation": datasets.Dataset.from_dict({"body": VAL, "n": list(range(len(VAL)))}),
        }
    )
    dd.save_to_disk(str(folder))
    return folder


def data_config(source, **extra):
    return from_dict({"data": {"source": source, "vocab_size": 300, **extra}}, "t").data


def test_parse():
    assert parse("hf:wikitext:wikitext-2-raw-v1@train") == ("wikitext", "wikitext-2-raw-v1", "train")
    assert parse("hf:roneneldan/TinyStories") == ("roneneldan/TinyStories", None, None)
    with pytest.raises(DataError, match="looks like"):
        parse("hf:")


def test_saved_dataset_keeps_its_own_split(saved):
    ds = prepare(data_config(f"hf:{saved}", text_field="body"), 16, 8, progress=False)
    assert ds.train.n_docs == len(TRAIN) and ds.val.n_docs == len(VAL)
    assert isinstance(ds.train.stream, np.memmap)
    assert ds.tokenizer.decode(ds.val.stream[1 : ds.val.bounds[1]]) == VAL[0]


def test_one_split_is_divided_by_data_split(saved):
    ds = prepare(data_config(f"hf:{saved}@train", text_field="body"), 16, 8, progress=False)
    assert ds.train.n_docs + ds.val.n_docs == len(TRAIN)
    assert ds.val.n_docs == round(len(TRAIN) * 0.1)


def test_local_files_builder_streams(tmp_path):
    folder = tmp_path / "files"
    folder.mkdir()
    for name, rows in (("train", TRAIN), ("validation", VAL)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
    ds = prepare(data_config(f"hf:{folder}"), 16, 8, progress=False)
    assert ds.train.n_docs == len(TRAIN) and ds.val.n_docs == len(VAL)


def test_missing_column_names_the_columns(saved):
    with pytest.raises(DataError, match=r"no column 'text' \(columns: body, n\); set data.text_field"):
        prepare(data_config(f"hf:{saved}"), 16, 8, progress=False)


def test_missing_extra_is_one_line(saved, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataError, match=r"pip install 'tuilm\[hf\]'"):
        prepare(data_config(f"hf:{saved}"), 16, 8, progress=False)


def test_unreachable_hub_is_one_line(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    out = run_tuilm("train", "hf:no-such-user/no-such-dataset", "--headless", "--steps", "1", env=env, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("error: hf:no-such-user/no-such-dataset: ") and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_train_on_a_local_dataset(saved, tmp_path):
    from tuilm.commands.train import TrainOptions, train_command

    run = tmp_path / "run"
    sets = ["vocab_size=300", "seq_len=16", "d_model=32", "n_layers=1", "n_heads=2", "batch_size=8", "text_field=body"]
    sets += ["warmup_steps=1", "eval_interval=2", "sample_tokens=4"]
    assert train_command(TrainOptions(f"hf:{saved}", sets, headless=True, out=run, steps=3)) == 0
    assert (run / "last.safetensors").is_file()
    assert 'source = "hf:' in (run / "config.toml").read_text()
