"""The BPE tokenizer: exact round trips, special ids, caching, shipped vocab, streaming decode."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuilm.config import DataConfig, load_toml
from tuilm.data.dataset import prepare
from tuilm.data.sources import load_corpus
from tuilm.data.tokenizer import EOS_ID, PAD_ID, Tokenizer, TokenizerSettings, load_or_train, train_tokenizer
from tuilm.errors import ConfigError, DataError
from tuilm.resources import recipe_path, shipped_dirs

CORPUS = ["To be, or not to be: that is the question.", "Ünïcödé — 日本語 🙂 and plain ASCII", "x" * 50] * 20


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(CORPUS, TokenizerSettings(vocab_size=400))


def test_special_ids(tokenizer):
    assert (tokenizer.pad_id, tokenizer.eos_id) == (PAD_ID, EOS_ID) == (0, 1)
    assert tokenizer.inner.id_to_token(0) == "<|pad|>" and tokenizer.inner.id_to_token(1) == "<|eos|>"


def test_special_token_text_stays_text(tokenizer):
    ids = tokenizer.encode("a <|eos|> b")
    assert EOS_ID not in ids
    assert tokenizer.decode(ids) == "a <|eos|> b"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text())
def test_round_trip_is_exact_for_any_text(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(min_size=1))
def test_stream_decoder_matches_decode_and_never_splits_a_character(tokenizer, text):
    ids = tokenizer.encode(text)
    decoder = tokenizer.stream_decoder()
    pieces = [decoder.feed(i) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces) or "\ufffd" in text


def test_stream_decoder_holds_back_incomplete_utf8(tokenizer):
    # Force a multi-byte character to arrive one byte-token at a time.
    byte_ids = [tokenizer.token_bytes.index(bytes([b])) for b in "🙂".encode()]
    decoder = tokenizer.stream_decoder()
    assert [decoder.feed(i) for i in byte_ids] == ["", "", "", "🙂"]


def test_eos_decodes_as_a_document_break(tokenizer):
    assert tokenizer.decode([*tokenizer.encode("a"), EOS_ID, *tokenizer.encode("b")]) == "a\n\nb"


def test_json_round_trip(tokenizer):
    again = Tokenizer.from_json(tokenizer.to_json())
    assert again.encode("the question") == tokenizer.encode("the question")
    with pytest.raises(DataError, match="not a valid tokenizer"):
        Tokenizer.from_json("{not json")


@pytest.mark.parametrize("size", [10, 257, 2_000_000])
def test_impossible_vocab_sizes(size):
    with pytest.raises(ConfigError, match="impossible for byte-level BPE"):
        TokenizerSettings(size).validate()


def test_trained_once_then_cached(small_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "fresh-cache"))
    corpus = load_corpus(small_corpus)
    calls = []
    first = load_or_train(corpus, TokenizerSettings(300), on_train=calls.append)
    second = load_or_train(corpus, TokenizerSettings(300), on_train=calls.append)
    assert len(calls) == 1 and "training a 300-token BPE tokenizer" in calls[0]
    assert first.to_json() == second.to_json()
    assert len(list((tmp_path / "fresh-cache" / "tuilm" / "tokenizers").glob("*.json"))) == 1
    load_or_train(corpus, TokenizerSettings(320), on_train=calls.append)  # other settings: trained again
    assert len(calls) == 2


@pytest.mark.parametrize("recipe", ["tiny_shakespeare", "tiny_shakespeare_cpu"])
def test_shipped_tiny_shakespeare_vocab_is_used(shakespeare_path, recipe):
    assert any(shipped_dirs("vocab")), "vocab/ must ship the recipes' trained tiny_shakespeare tokenizers"
    data = load_toml(recipe_path(recipe), recipe).data
    calls = []
    dataset = prepare(data, 128, progress=False, on_status=calls.append)
    assert calls == []  # found in vocab/, not trained
    assert dataset.tokenizer.vocab_size == data.vocab_size


def test_bpe_learns_from_training_documents_only(tmp_path, monkeypatch):
    # The val text (the tail) is a word the training documents never contain: no merge may spell it.
    train = [f"the cat sat on mat number {i} and the dog ran" for i in range(300)]
    text = "\n\n".join(train + ["zyxwvzyxwv " * 40] * 2) + "\n"  # 880 of 14,400 characters: all in the tail
    (tmp_path / "c.txt").write_text(text, encoding="utf-8")
    dataset = prepare(DataConfig(source=str(tmp_path / "c.txt"), vocab_size=300, split="tail"), 32, progress=False)
    assert dataset.val.n_tokens > 0
    vocab = dataset.tokenizer.inner.get_vocab()
    assert not any("zyx" in token for token in vocab)
    assert any("cat" in token for token in vocab)  # merges do come from the training text
