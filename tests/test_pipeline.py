"""The sequence pipeline on hand-made token lists, where every row and mask can be written down."""

import numpy as np
import pytest

from tuilm.data.pipeline import (
    IGNORE,
    collate,
    epoch_batches,
    eval_rows,
    make_rows,
    split_indices,
    tokenize,
)
from tuilm.errors import ConfigError, DataError

EOS, PAD = 1, 0
# Three documents; their token streams with the end-of-sequence token are 4, 2 and 6 tokens long.
DOCS = [[10, 11, 12], [20], [30, 31, 32, 33, 34]]
TEXTS = ["abc", "d", "efghi"]


@pytest.fixture
def docs():
    return tokenize(DOCS, TEXTS, EOS)


def rows_of(rows):
    return [rows.stream[s : s + n].tolist() for s, n in zip(rows.starts, rows.lengths, strict=True)]


def test_stream_layout(docs):
    assert docs.stream.tolist() == [1, 10, 11, 12, 1, 20, 1, 30, 31, 32, 33, 34, 1]
    assert docs.bounds.tolist() == [0, 4, 6, 12]
    assert docs.lengths.tolist() == [4, 2, 6]
    assert docs.n_tokens == 12
    assert docs.chars == 3 + 1 + 5 + 3  # characters plus one per document end


def test_pack_windows_cover_the_stream(docs):
    rows = make_rows(docs, "pack", 4)
    assert rows_of(rows) == [[1, 10, 11, 12, 1], [1, 20, 1, 30, 31], [31, 32, 33, 34, 1]]
    r = rows.report
    assert (r.rows, r.tokens_kept, r.tokens_dropped, r.padding_fraction) == (3, 12, 0, 0.0)


def test_pack_drops_the_tail_that_does_not_fill_a_window(docs):
    rows = make_rows(docs, "pack", 5)
    assert rows_of(rows) == [[1, 10, 11, 12, 1, 20], [20, 1, 30, 31, 32, 33]]
    assert (rows.report.tokens_kept, rows.report.tokens_dropped) == (10, 2)


def test_pack_with_stride_slides(docs):
    rows = make_rows(docs, "pack", 4, stride=2)
    assert rows.starts.tolist() == [0, 2, 4, 6, 8]
    assert rows.report.tokens_kept == 12  # distinct targets, not targets times overlap


def test_pad_one_document_per_row_overflow_dropped(docs):
    rows = make_rows(docs, "pad", 4)
    assert rows_of(rows) == [[1, 10, 11, 12, 1], [1, 20, 1], [1, 30, 31, 32, 33]]
    r = rows.report
    assert (r.rows, r.tokens_kept, r.tokens_dropped) == (3, 10, 2)
    assert r.padding_fraction == pytest.approx(2 / 12)


def test_pad_overflow_becomes_new_rows(docs):
    rows = make_rows(docs, "pad-overflow", 4)
    assert rows_of(rows) == [[1, 10, 11, 12, 1], [1, 20, 1], [1, 30, 31, 32, 33], [33, 34, 1]]
    r = rows.report
    assert (r.rows, r.tokens_kept, r.tokens_dropped) == (4, 12, 0)
    assert r.padding_fraction == pytest.approx(1 - 12 / 16)


def test_pad_overflow_discards_pieces_shorter_than_overflow_min(docs):
    rows = make_rows(docs, "pad-overflow", 4, overflow_min=3)
    assert rows_of(rows) == [[1, 10, 11, 12, 1], [1, 20, 1], [1, 30, 31, 32, 33]]
    assert rows.report.tokens_dropped == 2


def test_bucket_pads_each_batch_to_its_longest_row():
    token_lists = [[5] * n for n in (1, 9, 2, 8, 1, 9)]
    docs = tokenize(token_lists, ["x"] * 6, EOS)
    rows = make_rows(docs, "bucket", 16, batch_size=2)
    assert rows.report.tokens_kept == docs.n_tokens
    batches = epoch_batches(rows, 2, seed=0, epoch=0)
    widths = []
    for b in batches:
        batch = collate(rows, b, trim=True)
        widths.append(batch.inputs.shape[1])
        assert batch.inputs.shape[1] == rows.lengths[b].max() - 1
    # Sorted within the group: the short rows share batches, so little is padded.
    assert sorted(widths) == [2, 9, 10]
    assert rows.report.padding_fraction == pytest.approx(1 - 36 / (2 * (2 + 9 + 10)))


def test_collate_pad_targets_and_mask(docs):
    rows = make_rows(docs, "pad", 4)
    batch = collate(rows, np.array([1, 0]), pad_id=PAD)
    # A row's last real token is an input too (its target lies beyond the row, so it is ignored).
    assert batch.inputs.tolist() == [[1, 20, 1, 0], [1, 10, 11, 12]]
    assert batch.targets.tolist() == [[20, 1, IGNORE, IGNORE], [10, 11, 12, 1]]
    assert batch.mask.tolist() == [[True, True, True, False], [True, True, True, True]]
    assert batch.n_targets == 6
    assert batch.pos_ids is None and batch.doc_ids is None


def test_collate_doc_mask_restarts_positions_at_each_document(docs):
    rows = make_rows(docs, "pack", 4)
    batch = collate(rows, np.array([1]), eos_id=EOS, doc_mask=True)
    assert batch.inputs.tolist() == [[1, 20, 1, 30]]
    assert batch.targets.tolist() == [[20, 1, 30, 31]]
    assert batch.doc_ids.tolist() == [[1, 1, 2, 2]]
    assert batch.pos_ids.tolist() == [[0, 1, 0, 1]]
    # A window that starts inside a document counts positions from the window's start.
    batch = collate(rows, np.array([2]), eos_id=EOS, doc_mask=True)
    assert batch.pos_ids.tolist() == [[0, 1, 2, 3]]


def test_eval_rows_keep_every_token(docs):
    rows = eval_rows(docs, 2)
    assert rows.report.tokens_dropped == 0
    assert sum(rows.lengths - 1) == docs.n_tokens


def test_stream_eval_rows_predict_each_token_once_from_the_documents_before_it(docs):
    rows = eval_rows(docs, 5, "stream")
    # Consecutive windows, each one's last token the next one's first: the second document's tokens are
    # predicted from the end of the first, which the document rows never show them.
    assert rows_of(rows) == [[1, 10, 11, 12, 1, 20], [20, 1, 30, 31, 32, 33], [33, 34, 1]]
    batch = collate(rows, np.arange(len(rows)), trim=True, eos_id=EOS)
    assert batch.n_targets == docs.n_tokens
    assert sorted(batch.targets[batch.targets != IGNORE].tolist()) == sorted(docs.stream[1:].tolist())
    with pytest.raises(ConfigError, match="unknown val context"):
        eval_rows(docs, 5, "speech")


def test_epoch_batches_are_reproducible_and_drop_only_an_incomplete_last_batch(docs):
    rows = make_rows(docs, "pad-overflow", 4)
    a = epoch_batches(rows, 3, seed=7, epoch=2)
    b = epoch_batches(rows, 3, seed=7, epoch=2)
    assert [x.tolist() for x in a] == [x.tolist() for x in b]
    assert len(a) == 1 and len(a[0]) == 3
    # An epoch smaller than one batch keeps its rows.
    assert [len(x) for x in epoch_batches(rows, 10, seed=7, epoch=0)] == [4]


def test_epochs_shuffle_differently():
    docs = tokenize([[5, 6]] * 40, ["ab"] * 40, EOS)
    rows = make_rows(docs, "pad", 4)
    first = np.concatenate(epoch_batches(rows, 4, seed=1, epoch=0))
    second = np.concatenate(epoch_batches(rows, 4, seed=1, epoch=1))
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(40))
    assert first.tolist() != second.tolist()


def test_split_random_is_seeded_and_disjoint():
    train, val = split_indices(100, "random", 0.1, seed=3)
    again_train, again_val = split_indices(100, "random", 0.1, seed=3)
    assert val.tolist() == again_val.tolist() and train.tolist() == again_train.tolist()
    assert len(val) == 10 and len(train) == 90
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(100))
    assert val.tolist() != list(range(90, 100))
    assert split_indices(100, "random", 0.1, seed=4)[1].tolist() != val.tolist()


def test_split_tail_holds_out_the_last_documents():
    train, val = split_indices(20, "tail", 0.25)
    assert val.tolist() == [15, 16, 17, 18, 19]
    assert train.tolist() == list(range(15))


def test_split_tail_cuts_by_characters_at_a_document_boundary():
    # 100 characters: the last 30% begins at 70, inside document 2 (60..90), so val starts at document 3.
    train, val = split_indices([40, 20, 30, 10], "tail", 0.3)
    assert train.tolist() == [0, 1, 2] and val.tolist() == [3]
    train, val = split_indices([40, 20, 30, 10], "tail", 0.4)  # 60 is document 2's own start
    assert val.tolist() == [2, 3]


def test_tail_split_of_tiny_shakespeare_is_nanogpts_val_text(shakespeare_path):
    from tuilm.config import DataConfig
    from tuilm.data.dataset import split_corpus
    from tuilm.data.sources import load_corpus

    corpus = load_corpus(str(shakespeare_path))
    _, val = split_corpus(corpus, DataConfig(split="tail", val_fraction=0.1))
    text = shakespeare_path.read_text(encoding="utf-8")
    nanogpt_val = text[int(len(text) * 0.9) :]  # nanoGPT's data/shakespeare_char/prepare.py
    ours = "\n\n".join(corpus.documents[i] for i in val)
    # nanoGPT's cut falls on the "?" ending a speech; we start at the next speech and drop the final newline.
    assert nanogpt_val == "?\n\n" + ours + "\n"


def test_split_needs_two_documents():
    with pytest.raises(DataError, match="at least 2"):
        split_indices(1)
    with pytest.raises(ConfigError, match="unknown split"):
        split_indices(10, "middle")


def test_corpus_too_small_for_one_sequence(docs):
    with pytest.raises(DataError, match="too small for one sequence"):
        make_rows(docs, "pack", 64)


def test_bad_policy_settings(docs):
    with pytest.raises(ConfigError, match="unknown sequence policy"):
        make_rows(docs, "truncate", 4)
    with pytest.raises(ConfigError, match="stride"):
        make_rows(docs, "pack", 4, stride=9)
