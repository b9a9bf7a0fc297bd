"""Readers and batching, against expected values written out by hand."""

import gzip
import lzma
import re

import numpy as np
import pytest

from rhn_core.data import readers
from rhn_core.errors import RHNError


def test_ptb_vocab_is_count_then_alphabetical_with_eos(tmp_path):
    (tmp_path / "ptb.train.txt").write_text(" b a c \n a b \n a \n")
    (tmp_path / "ptb.valid.txt").write_text(" c a \n")
    (tmp_path / "ptb.test.txt").write_text(" a zz b \n")
    corpus = readers.read_ptb(str(tmp_path))
    # counts: a 3, <eos> 3, b 2, c 1; the tie a/<eos> is broken alphabetically
    # ('<' sorts before 'a'): <eos>=0, a=1, b=2, c=3.
    assert corpus.vocab_size == 4
    np.testing.assert_array_equal(corpus.train, [2, 1, 3, 0, 1, 2, 0, 1, 0])
    np.testing.assert_array_equal(corpus.valid, [3, 1, 0])
    np.testing.assert_array_equal(corpus.test, [1, 2, 0])  # 'zz' is not in the vocabulary: dropped
    assert corpus.unit == "word"
    # split -> (words left out, words in the file, <eos> included): valid c a <eos>, test a zz b <eos>
    assert corpus.dropped == {"valid": (0, 3), "test": (1, 4)}


def test_ptb_symbols_are_the_words_in_id_order(tmp_path):
    # counts z 3, then <eos> 1 and y 1 (alphabetical: '<' before 'y'): not the alphabetical order
    for split in ("train", "valid", "test"):
        (tmp_path / f"ptb.{split}.txt").write_text(" z z z y \n")
    corpus = readers.read_ptb(str(tmp_path))
    assert corpus.symbols == ["z", "<eos>", "y"]
    np.testing.assert_array_equal(corpus.train, [0, 0, 0, 2, 1])


def test_compressed_files_read_like_plain(tmp_path):
    text = b" x y \n y \n"
    for split in ("train", "valid"):
        (tmp_path / f"ptb.{split}.txt").write_bytes(text)
    with lzma.open(tmp_path / "ptb.test.txt.xz", "wb") as f:
        f.write(text)
    plain = readers.read_ptb(str(tmp_path))
    np.testing.assert_array_equal(plain.test, plain.train)
    (tmp_path / "ptb.test.txt.xz").unlink()
    with gzip.open(tmp_path / "ptb.test.txt.gz", "wb") as f:
        f.write(text)
    np.testing.assert_array_equal(readers.read_ptb(str(tmp_path)).test, plain.train)


def test_batching_layout_written_out():
    ids = np.arange(23)
    rows = readers.batch_rows(ids, 3)  # batch_len = 7, ids 21 and 22 dropped
    np.testing.assert_array_equal(
        rows, [[0, 1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12, 13], [14, 15, 16, 17, 18, 19, 20]]
    )
    assert readers.epoch_size(rows, 2) == 3  # (7 - 1) // 2
    x, y = readers.minibatch(rows, 1, 2)
    np.testing.assert_array_equal(x, [[2, 3], [9, 10], [16, 17]])
    np.testing.assert_array_equal(y, [[3, 4], [10, 11], [17, 18]])
    x, y = readers.minibatch(rows, 2, 2)
    np.testing.assert_array_equal(y, [[5, 6], [12, 13], [19, 20]])


def test_the_last_window_needs_its_targets():
    # batch_len 9, T = 3: a third window [6, 9) would need the target in column 9, which does not exist
    rows = readers.batch_rows(np.arange(28), 3)  # 28 // 3 = 9 columns, id 27 dropped
    assert rows.shape == (3, 9) and rows[2, 8] == 26
    assert readers.epoch_size(rows, 3) == 2  # (9 - 1) // 3, where 9 // 3 = 3
    x, y = readers.minibatch(rows, 1, 3)
    np.testing.assert_array_equal(x, [[3, 4, 5], [12, 13, 14], [21, 22, 23]])
    np.testing.assert_array_equal(y, [[4, 5, 6], [13, 14, 15], [22, 23, 24]])
    assert readers.epoch_size(readers.batch_rows(np.arange(30), 3), 3) == 3  # 10 columns: (10 - 1) // 3
    readers.check_batchable(np.arange(12), 3, 3, "valid")  # 4 columns: one window and its targets
    with pytest.raises(RHNError, match="valid split has 11 tokens"):
        readers.check_batchable(np.arange(11), 3, 3, "valid")  # 3 columns: no target for the last input


def test_original_epoch_sizes():
    # The original's epoch sizes: PTB train 929,589 tokens -> 1,327 steps; 90M chars -> 14,062.
    assert (929589 // 20 - 1) // 35 == readers.epoch_size(np.zeros((20, 929589 // 20)), 35) == 1327
    assert readers.epoch_size(np.zeros((128, 90_000_000 // 128)), 50) == 14062


def test_stream_windows_score_every_prediction_once():
    ids = np.arange(10)
    windows = list(readers.stream_windows(ids, 4))
    xs = np.concatenate([x[0] for x, _ in windows])
    ys = np.concatenate([y[0] for _, y in windows])
    np.testing.assert_array_equal(xs, np.arange(9))
    np.testing.assert_array_equal(ys, np.arange(1, 10))
    assert [x.shape for x, _ in windows] == [(1, 4), (1, 4), (1, 1)]


def test_byte_corpus_ids_and_split(tmp_path):
    (tmp_path / "text8").write_bytes(b"ba ab" * 4)  # 20 bytes, values ' ' < 'a' < 'b'
    corpus = readers.read_byte_corpus(str(tmp_path), "text8", 3, "hint")
    assert corpus.vocab_size == 3 and corpus.unit == "char"
    np.testing.assert_array_equal(corpus.train[:5], [2, 1, 0, 1, 2])
    assert (len(corpus.train), len(corpus.valid), len(corpus.test)) == (14, 3, 3)
    assert corpus.train.dtype == np.uint8


@pytest.mark.parametrize("prepared", [False, True], ids=["raw", "prepared"])
def test_byte_corpus_too_short_for_valid_and_test_names_its_file(tmp_path, prepared):
    # 2 x num_test_symbols = 10: 10 symbols leave no training data, 11 leave one
    for size in (10, 11):
        data = bytes(range(97, 97 + size))
        if prepared:
            ids_path, values_path = readers.prepared_paths(str(tmp_path), "enwik8")
            np.save(ids_path, np.arange(size, dtype=np.uint8))
            np.save(values_path, np.frombuffer(data, dtype=np.uint8))
            named = ids_path
        else:
            (tmp_path / "enwik8").write_bytes(data)
            named = str(tmp_path / "enwik8")
        if size == 10:
            with pytest.raises(RHNError, match=f"^{re.escape(named)} has 10 symbols, fewer than valid"):
                readers.read_byte_corpus(str(tmp_path), "enwik8", 5, "hint")
        else:
            corpus = readers.read_byte_corpus(str(tmp_path), "enwik8", 5, "hint")
            assert (len(corpus.train), len(corpus.valid), len(corpus.test)) == (1, 5, 5)


def test_chars_split_is_90_5_5(small_text):
    corpus = readers.read_chars(small_text)
    assert (len(corpus.train), len(corpus.valid), len(corpus.test)) == (10800, 600, 600)


def test_missing_text_file_says_what_to_set(tmp_path):
    missing = str(tmp_path / "book.txt")
    with pytest.raises(RHNError, match=f"^text file {re.escape(missing)} not found .*: set data_path=FILE$"):
        readers.read_chars(missing)


def test_too_short_split_is_a_clear_error():
    with pytest.raises(RHNError, match=r"valid split has 30 tokens.*batch_size=4 x num_steps=10 \(needs >= 44\)"):
        readers.check_batchable(np.arange(30), 4, 10, "valid")
    readers.check_batchable(np.arange(44), 4, 10, "valid")  # exactly B * (T + 1)


def test_real_ptb_counts(ptb_dir):
    corpus = readers.read_ptb(ptb_dir)
    assert corpus.vocab_size == 10000
    assert (len(corpus.train), len(corpus.valid), len(corpus.test)) == (929589, 73760, 82430)
    assert corpus.train.max() == 9999
