"""Named corpora (issue 15): resumable verified downloads from a local server, safe unzip, own splits, memmaps."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tuilm.atomic import FILE_MODE
from tuilm.cli import app
from tuilm.config import from_dict
from tuilm.data import corpora, large
from tuilm.data.corpora import CORPORA, NamedCorpus, RemoteFile, Split
from tuilm.data.download import download, safe_extract
from tuilm.errors import DataError

TEXT = "\n\n".join(f"Story {i}: " + " ".join(f"w{(i * 3 + j) % 31}" for j in range(8 + i % 13)) for i in range(300))
PAYLOAD = TEXT.encode() * 3


class Server:
    """Serves `files` on 127.0.0.1 with Range support; `break_after` closes the first full response early."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[dict] = []
        self.break_after: int | None = None
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                body = server.files.get(self.path.lstrip("/"))
                server.requests.append({"path": self.path, "range": self.headers.get("Range")})
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                if rng := self.headers.get("Range"):
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                chunk = body[start:]
                if server.break_after is not None and not rng:
                    self.wfile.write(chunk[: server.break_after])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(chunk)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def test_download_verifies_and_leaves_only_the_file(server, tmp_path):
    server.files["a.txt"] = PAYLOAD
    dest = download(f"{server.url}/a.txt", tmp_path / "c" / "a.txt", sha(PAYLOAD), len(PAYLOAD), progress=True)
    assert dest.read_bytes() == PAYLOAD
    assert [p.name for p in dest.parent.iterdir()] == ["a.txt"]  # no part file left behind
    assert dest.stat().st_mode & 0o777 == FILE_MODE  # what open() would have made, not mkstemp's 0600


def test_download_unreachable(server, tmp_path):
    with pytest.raises(DataError, match="could not download"):
        download(f"{server.url}/missing.txt", tmp_path / "x.txt", "0" * 64, progress=False)


def test_download_checksum_mismatch_saves_nothing(server, tmp_path):
    server.files["a.txt"] = PAYLOAD
    with pytest.raises(DataError, match="expected 0000"):
        download(f"{server.url}/a.txt", tmp_path / "c" / "a.txt", "0" * 64, len(PAYLOAD), progress=False)
    assert list((tmp_path / "c").iterdir()) == []


def test_download_size_mismatch_without_hash(server, tmp_path):
    server.files["a.txt"] = PAYLOAD
    with pytest.raises(DataError, match=f"expected {len(PAYLOAD) + 1:,}"):
        download(f"{server.url}/a.txt", tmp_path / "a.txt", None, len(PAYLOAD) + 1, progress=False)


def test_broken_connection_resumes_with_a_range_request(server, tmp_path):
    server.files["a.txt"] = PAYLOAD
    server.break_after = 5000
    dest = download(f"{server.url}/a.txt", tmp_path / "a.txt", sha(PAYLOAD), len(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert [r["range"] for r in server.requests] == [None, "bytes=5000-"]


def test_broken_connection_then_a_later_run_resumes(server, tmp_path):
    server.files["a.txt"] = PAYLOAD
    server.break_after = 7000
    dest = tmp_path / "a.txt"
    with pytest.raises(DataError, match=r"broke off after 7,000 bytes.*run again to resume"):
        download(f"{server.url}/a.txt", dest, sha(PAYLOAD), len(PAYLOAD), progress=False, attempts=1)
    assert not dest.exists() and (tmp_path / "a.txt.part").stat().st_size == 7000
    download(f"{server.url}/a.txt", dest, sha(PAYLOAD), len(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests[-1]["range"] == "bytes=7000-"


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_archive_with_a_dotdot_member_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    archive.write_bytes(zip_bytes({"ok/wiki.train.raw": b"fine", "../escaped.txt": b"gotcha"}))
    with pytest.raises(DataError, match=r"refusing to unpack, member '\.\./escaped\.txt'"):
        safe_extract(archive, ["ok/wiki.train.raw"], tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "out").exists()
    archive.write_bytes(zip_bytes({"/abs.txt": b"x"}))
    with pytest.raises(DataError, match="refusing"):
        safe_extract(archive, ["/abs.txt"], tmp_path / "out")


@pytest.fixture
def fake_wikitext(server, tmp_path, monkeypatch):
    """A stand-in for wikitext2: a zip of train/valid/test served locally, registered as a named corpus."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("TUILM_DATA_DIR", raising=False)
    parts = {
        "w/wiki.train.raw": TEXT.encode(),
        "w/wiki.valid.raw": "\n\n".join(f"Valid {i}: w1 w2 w{i}" for i in range(40)).encode(),
        "w/wiki.test.raw": "\n\n".join(f"Test {i}: w3 w{i}" for i in range(30)).encode(),
    }
    blob = zip_bytes(parts)
    server.files["w.zip"] = blob
    corpus = NamedCorpus(
        "fakewiki",
        "a stand-in",
        "CC0",
        "",
        (RemoteFile("w.zip", f"{server.url}/w.zip", len(blob), sha(blob), "test"),),
        (
            ("train", Split("w.zip", "w/wiki.train.raw")),
            ("val", Split("w.zip", "w/wiki.valid.raw")),
            ("test", Split("w.zip", "w/wiki.test.raw")),
        ),
    )
    monkeypatch.setitem(CORPORA, "fakewiki", corpus)
    monkeypatch.setattr(corpora, "SPLIT_CORPORA", (*corpora.SPLIT_CORPORA, "fakewiki"))
    monkeypatch.setattr(large, "SPLIT_CORPORA", corpora.SPLIT_CORPORA)
    return corpus, parts


def test_named_corpus_downloads_once_and_uses_its_own_split(fake_wikitext, server):
    from tuilm.data.dataset import prepare

    data = from_dict({"data": {"source": "fakewiki", "vocab_size": 300}}, "t").data
    ds = prepare(data, 16, 8, progress=False)
    assert ds.train.n_docs == 300 and ds.val.n_docs == 40  # the corpus's own files, not a random 10%
    assert isinstance(ds.train.stream, np.memmap)
    assert ds.tokenizer.decode(ds.val.stream[1 : ds.val.bounds[1]]) == "Valid 0: w1 w2 w0"
    assert ds.summary()["documents"] == 340
    ds2 = prepare(data, 16, 8, progress=False)  # cached: no second download, same tokens
    assert [r["path"] for r in server.requests] == ["/w.zip"]
    assert np.array_equal(ds2.train.stream, ds.train.stream)


def test_offline_names_the_file_to_place(fake_wikitext, server, tmp_path, monkeypatch):
    server.files.clear()
    with pytest.raises(DataError, match=r"put w\.zip \(from http://127\.0\.0\.1:\d+/w\.zip\) in the folder named by"):
        corpora.open_corpus("fakewiki", progress=False)
    # placed by hand under TUILM_DATA_DIR, it is verified and used
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "w.zip").write_bytes(zip_bytes(fake_wikitext[1]))
    monkeypatch.setenv("TUILM_DATA_DIR", str(folder))
    corpus = corpora.open_corpus("fakewiki", progress=False)
    assert corpus.splits["test"].path.read_bytes() == fake_wikitext[1]["w/wiki.test.raw"]
    (folder / "w.zip").write_bytes(b"not it")
    with pytest.raises(DataError, match=r"is not the expected w\.zip"):
        corpora.open_corpus("fakewiki", progress=False)


def test_streamed_documents_match_the_in_memory_reader(tmp_path, monkeypatch):
    from tuilm.data.sources import split_documents

    path = tmp_path / "t.txt"
    text = "\n\n".join(f"doc {i} é " + "x" * (i % 50) + "\n \nnext" * (i % 2) for i in range(2000))
    path.write_text(text, encoding="utf-8")
    monkeypatch.setattr(large, "BLOCK_BYTES", 97)  # blocks cut documents, separators and UTF-8 characters
    assert list(large.iter_documents(corpora.TextSlice(path))) == split_documents(text)


def test_large_local_file_streams_with_a_tail_split(tmp_path, monkeypatch):
    from tuilm.data.dataset import prepare

    monkeypatch.setattr(large, "LARGE_FILE_BYTES", 1000)
    path = tmp_path / "big.txt"
    path.write_text(TEXT, encoding="utf-8")
    data = from_dict({"data": {"source": str(path), "vocab_size": 300}}, "t").data
    ds = prepare(data, 16, 8, progress=False)
    assert isinstance(ds.val.stream, np.memmap)
    assert ds.train.n_docs + ds.val.n_docs == 300  # no document lost or split at the cut
    assert 20 <= ds.val.n_docs <= 40


def test_tinystories_separator(tmp_path):
    path = tmp_path / "ts.txt"
    path.write_text("Once upon a time.\n<|endoftext|>\nThe end came.\n<|endoftext|>\n", encoding="utf-8")
    docs = list(large.iter_documents(corpora.TextSlice(path), "<|endoftext|>"))
    assert docs == ["Once upon a time.", "The end came."]


def test_table_is_complete_and_listed():
    for c in CORPORA.values():
        for f in c.files:
            assert f.url.startswith(("https://", "http://")) and f.checksum_source
            assert f.sha256 is None or len(f.sha256) == 64
            assert f.sha256 or f.checksum_source.startswith("unverified")
    assert CORPORA["enwik8"].split_map["val"] == Split("enwik8.zip", "enwik8", 90_000_000, 95_000_000)
    result = CliRunner().invoke(app, ["data", "list"], env={"COLUMNS": "160"})
    assert result.exit_code == 0
    for name in ("tiny_shakespeare", "wikitext2", "wikitext103", "tinystories", "enwik8"):
        assert name in result.output
    assert "91c00ae287f0" in result.output and "unverified" in result.output


def test_cli_help_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, tuilm.cli; sys.argv=['tuilm','--help']\ntry: tuilm.cli.main()\nexcept SystemExit: pass\n"
    code += "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("False")


def test_token_cache_is_keyed_by_tokenizer(fake_wikitext, tmp_path):
    from tuilm.data.tokenizer import TokenizerSettings

    corpus = corpora.open_corpus("fakewiki", progress=False)
    a = large.load_or_train_streamed(corpus, TokenizerSettings(300))
    b = large.load_or_train_streamed(corpus, TokenizerSettings(280))
    assert large.tokens_key(corpus, "train", a) != large.tokens_key(corpus, "train", b)
    ta, tb = large.tokenize_streamed(corpus, "train", a), large.tokenize_streamed(corpus, "train", b)
    assert ta.n_docs == tb.n_docs and ta.n_tokens != tb.n_tokens
    meta = sorted(Path(corpora.cache_dir() / "tokens").glob("*.json"))
    assert len(meta) == 2 and all(json.loads(p.read_text())["documents"] == 300 for p in meta)


def test_train_then_eval_on_a_named_corpus(fake_wikitext, tmp_path, capsys):
    from tests.helpers import tiny_trainer
    from tuilm.commands.eval import eval_command
    from tuilm.commands.train import run_headless

    trainer, _ = tiny_trainer("fakewiki", tmp_path / "run", "max_steps=2")
    assert trainer.dataset.val.n_docs == 40
    assert run_headless(trainer) == 0
    capsys.readouterr()
    eval_command(tmp_path / "run", None, "cpu")  # the run's own val split, rebuilt from the memory-mapped cache
    assert "fakewiki (val split, 40 documents)" in capsys.readouterr().out
    eval_command(tmp_path / "run", "fakewiki", "cpu")  # --data NAME scores its test split
    assert "fakewiki (test split, 30 documents)" in capsys.readouterr().out


@pytest.mark.parametrize("name", corpora.SPLIT_CORPORA)
def test_each_real_corpus_downloads_verifies_and_caches(name, server, tmp_path, monkeypatch):
    """The table's own file names, archive members and split ranges, served as small stand-ins."""
    from dataclasses import replace

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("TUILM_DATA_DIR", raising=False)
    real = CORPORA[name]
    scale = 100_000  # enwik8's 90M/5M/5M bytes become 900/50/50
    splits = tuple(
        (k, replace(s, start=s.start // scale, end=None if s.end is None else s.end // scale)) for k, s in real.splits
    )
    files = []
    for f in real.files:
        members = {s.member for _, s in splits if s.file == f.filename and s.member}
        body = TEXT.encode()[:1000]
        blob = zip_bytes({m: body for m in members}) if members else body
        server.files[f.filename] = blob
        files.append(replace(f, url=f"{server.url}/{f.filename}", size=len(blob), sha256=sha(blob)))
    monkeypatch.setitem(CORPORA, name, replace(real, files=tuple(files), splits=splits))
    corpus = corpora.open_corpus(name, progress=False)
    assert set(corpus.splits) == {k for k, _ in real.splits}
    for part in corpus.splits.values():
        assert list(large.iter_documents(part, corpus.extra.get("separator", "")))
    corpora.open_corpus(name, progress=False)  # cached: nothing downloaded twice
    assert sorted(r["path"] for r in server.requests) == sorted(f"/{f.filename}" for f in real.files)
