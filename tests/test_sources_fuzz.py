"""Generated corpora of every shape a careless user can point tuilm at: load_corpus returns documents or says
in one DataError line why not; it never hangs on a FIFO, never reads a device, never overflows the stack."""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuilm.data import sources
from tuilm.data.sources import load_corpus
from tuilm.errors import DataError

FAST = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)


def outcome(path: Path) -> str:
    start = time.monotonic()
    try:
        corpus = load_corpus(path)
    except DataError as e:
        assert str(e) and "\n" not in str(e) and len(str(e)) < 600, str(e)
        result = "refused"
    else:
        assert corpus.documents and all(isinstance(d, str) and d.strip() for d in corpus.documents)
        for d in corpus.documents:
            d.encode("utf-8")  # every document is text a tokenizer can take (no lone surrogates)
        assert len(corpus.fingerprint) == 64
        result = "loaded"
    assert time.monotonic() - start < 30  # catches a hang (a FIFO, an endless line), not slowness
    return result


texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=200)
encodings = st.sampled_from(["utf-8", "utf-16", "utf-32", "latin-1", "cp1252", "utf-8-sig"])


def encoded(text: str, encoding: str) -> bytes:
    return text.encode(encoding, errors="replace")


@FAST
@given(data=st.binary(max_size=2000), suffix=st.sampled_from([".txt", ".jsonl", ".jsonl.zst", ".md"]))
def test_random_bytes(scratch, data, suffix):
    path = scratch / f"random{suffix}"
    path.write_bytes(data)
    outcome(path)


@FAST
@given(parts=st.lists(st.tuples(texts, encodings), min_size=1, max_size=5))
def test_mixed_encodings_in_one_text_file(scratch, parts):
    data = b"\n\n".join(encoded(text, enc) for text, enc in parts)
    path = scratch / "mixed.txt"
    path.write_bytes(data)
    result = outcome(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        assert result == "refused"
    else:
        assert result == ("loaded" if text.strip() and "\0" not in text else "refused")


record_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
lines = st.one_of(
    st.builds(lambda t: json.dumps({"text": t}), texts),
    st.builds(lambda t: json.dumps({"text": t}, ensure_ascii=False), texts),
    record_values.map(json.dumps),
    st.integers(1, 5000).map(lambda n: "[" * n + "]" * n),
    st.integers(1, 5000).map(lambda n: '{"text": "x", "a": ' + "[" * n + "]" * n + "}"),
    st.just('{"text": "\\ud800 lone surrogate"}'),
    texts,
)


@FAST
@given(records=st.lists(lines, min_size=1, max_size=8), encoding=encodings, compress=st.booleans())
def test_generated_jsonl(scratch, records, encoding, compress):
    data = b"\n".join(encoded(line, encoding) for line in records)
    path = scratch / ("gen.jsonl.zst" if compress else "gen.jsonl")
    path.write_bytes(zstandard.ZstdCompressor().compress(data) if compress else data)
    outcome(path)


def test_a_deeply_nested_line_is_refused_with_the_line_number(scratch):
    path = scratch / "deep.jsonl"
    path.write_text('{"text": "fine"}\n' + "[" * 100_000 + "]" * 100_000 + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"deep.jsonl:2: JSON nested too deeply"):
        load_corpus(path)


def test_a_line_longer_than_the_limit_is_refused(scratch, monkeypatch):
    monkeypatch.setattr(sources, "MAX_LINE", 1000)
    path = scratch / "long.jsonl"
    path.write_text('{"text": "short"}\n' + json.dumps({"text": "x" * 5000}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"long.jsonl:2: a line longer than 1,000 bytes"):
        load_corpus(path)
    path.write_text(json.dumps({"text": "x" * 900}) + "\n", encoding="utf-8")
    assert load_corpus(path).documents == ["x" * 900]


def test_a_compressed_file_without_newlines_stops_at_the_limit(scratch, monkeypatch):
    monkeypatch.setattr(sources, "MAX_LINE", 10_000)
    path = scratch / "bomb.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(b"x" * 10_000_000))  # 10 MB, all one "line"
    with pytest.raises(DataError, match="a line longer than 10,000 bytes"):
        load_corpus(path)


def test_lone_surrogates_in_json_become_replacement_characters(scratch):
    path = scratch / "surrogate.jsonl"
    path.write_text('{"text": "a\\ud800b"}\n', encoding="utf-8")
    assert load_corpus(path).documents == ["a\ufffdb"]


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_a_fifo_is_refused_without_blocking(scratch, suffix):
    fifo = scratch / f"pipe{suffix}"
    os.mkfifo(fifo)
    result = []
    worker = threading.Thread(target=lambda: result.append(outcome(fifo)), daemon=True)
    worker.start()
    worker.join(5)
    if worker.is_alive():  # unblock the reader so the test process can end, then fail
        with open(fifo, "wb"):
            pass
        pytest.fail("load_corpus blocked on a FIFO")
    assert result == ["refused"]
    with pytest.raises(DataError, match="not a regular file"):
        load_corpus(fifo)


def test_a_device_is_refused():
    with pytest.raises(DataError, match="/dev/zero: not a regular file"):
        load_corpus("/dev/zero")


def test_a_fifo_inside_a_directory_is_skipped(scratch):
    folder = scratch / "withfifo"
    folder.mkdir()
    (folder / "a.txt").write_text("hello world", encoding="utf-8")
    os.mkfifo(folder / "b.txt")
    assert load_corpus(folder).documents == ["hello world"]
