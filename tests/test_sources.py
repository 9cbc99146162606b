"""Data sources: local formats, bad input, and the named-dataset lookup (the downloader: test_corpora.py)."""

import functools
import hashlib
import http.server
import json
import threading

import pytest
import zstandard

from tuilm.data import sources
from tuilm.data.sources import NamedSource, load_corpus, split_documents
from tuilm.errors import DataError


def test_plain_text_splits_on_blank_lines():
    text = "A:\nline one\nline two\n\n\nB:\n  indented\r\n\r\nC\n   \nD\n"
    assert split_documents(text) == ["A:\nline one\nline two", "B:\n  indented", "C", "D"]


def test_txt_file(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("one\n\ntwo\n", encoding="utf-8")
    corpus = load_corpus(path)
    assert corpus.documents == ["one", "two"]
    assert corpus.fingerprint == hashlib.sha256(b"one\n\ntwo\n").hexdigest()


def test_jsonl_and_zst(tmp_path):
    records = [{"text": "first doc", "meta": {"pile_set_name": "x"}}, {"text": "second\n\nstill second"}]
    raw = "".join(json.dumps(r) + "\n" for r in records).encode()
    (tmp_path / "d.jsonl").write_bytes(raw)
    (tmp_path / "d.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    for name in ("d.jsonl", "d.jsonl.zst"):
        assert load_corpus(tmp_path / name).documents == ["first doc", "second\n\nstill second"]


def test_directory_of_txt_files(tmp_path):
    (tmp_path / "b.txt").write_text("bee\n\nbuzz", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_text("ant", encoding="utf-8")
    (tmp_path / "ignored.md").write_text("not me", encoding="utf-8")
    assert load_corpus(tmp_path).documents == ["bee", "buzz", "ant"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.txt", b"", "is empty"),
        ("blank.txt", b"\n\n  \n", "is empty"),
        ("binary.txt", b"abc\x00\x01\x02", "binary file (NUL byte at offset 3)"),
        ("latin1.txt", "caf\xe9 au lait".encode("latin-1"), "byte 0xe9 at offset 3"),
        ("bad.jsonl", b'{"text": "ok"}\nnot json\n', "bad.jsonl:2: not a JSON object"),
        ("notext.jsonl", b'{"body": "x"}\n', "string 'text' field"),
        ("bad.jsonl.zst", b"this is not zstd data", "not a valid zstd-compressed file"),
    ],
)
def test_bad_files_name_the_problem(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_corpus(path)


def test_missing_path_and_empty_directory(tmp_path):
    with pytest.raises(DataError, match="no such file or directory"):
        load_corpus(tmp_path / "nope.txt")
    with pytest.raises(DataError, match=r"holds no \.txt files"):
        load_corpus(tmp_path)


# -- named datasets and the downloader ---------------------------------------------------------------------


@pytest.fixture
def http_server(tmp_path):
    """Serve tmp_path/www on 127.0.0.1 (a local stand-in for the dataset's public URL)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


PAYLOAD = b"To be, or not to be\n\nthat is the question\n" * 100


@pytest.fixture
def fake_source(monkeypatch, http_server, tmp_path):
    root, url = http_server
    (root / "input.txt").write_bytes(PAYLOAD)
    source = NamedSource("fake", "fake.txt", f"{url}/input.txt", hashlib.sha256(PAYLOAD).hexdigest(), len(PAYLOAD))
    monkeypatch.setitem(sources.NAMED_SOURCES, "fake", source)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("TUILM_DATA_DIR", raising=False)
    return source, root


def test_named_source_downloads_into_the_cache_once(fake_source, tmp_path):
    _source, root = fake_source
    corpus = load_corpus("fake", progress=False)
    cached = tmp_path / "xdg" / "tuilm" / "datasets" / "fake.txt"
    assert corpus.path == cached and cached.read_bytes() == PAYLOAD
    (root / "input.txt").unlink()  # a second load must not need the network
    assert load_corpus("fake").documents == corpus.documents


def test_named_source_prefers_the_data_dir(fake_source, tmp_path, monkeypatch):
    _source, root = fake_source
    (root / "input.txt").unlink()
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "fake.txt").write_bytes(PAYLOAD)
    monkeypatch.setenv("TUILM_DATA_DIR", str(data_dir))
    assert load_corpus("fake").path == data_dir / "fake.txt"


def test_named_source_offline_says_where_to_put_the_file(fake_source, tmp_path, monkeypatch):
    _source, root = fake_source
    (root / "input.txt").unlink()
    monkeypatch.setenv("TUILM_DATA_DIR", str(tmp_path / "data"))
    with pytest.raises(DataError) as err:
        load_corpus("fake", progress=False)
    message = str(err.value)
    assert "could not download" in message and "to work offline, put fake.txt at" in message
    assert str(tmp_path / "data" / "fake.txt") in message
    monkeypatch.delenv("TUILM_DATA_DIR")
    with pytest.raises(DataError, match=r"or in a folder named by \$TUILM_DATA_DIR"):
        load_corpus("fake", progress=False)


def test_named_source_rejects_a_wrong_local_file(fake_source, tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "fake.txt").write_bytes(b"something else")
    monkeypatch.setenv("TUILM_DATA_DIR", str(data_dir))
    with pytest.raises(DataError, match="sha256 mismatch"):
        load_corpus("fake")


def test_tiny_shakespeare_from_the_data_dir(shakespeare_path):
    corpus = load_corpus("tiny_shakespeare")
    assert corpus.path == shakespeare_path
    assert corpus.fingerprint == sources.NAMED_SOURCES["tiny_shakespeare"].sha256
    assert len(corpus.documents) == 7222
    assert corpus.documents[0] == "First Citizen:\nBefore we proceed any further, hear me speak."
