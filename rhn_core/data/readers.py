"""Dataset readers (text -> int id arrays) and the original BPTT batching.

Readers accept plain files and ``.xz`` / ``.gz`` compressed copies, so the
verified compressed copies of PTB work as they are.

Batching (as the original's reader; docs/faithfulness.md): a stream of N ids is cut into B rows of
batch_len = N // B ids (the last N mod B ids are dropped); minibatch i holds
columns [i*T, (i+1)*T) as inputs and the same columns shifted by one as targets:

        batch_len ->
    row 0 | x x x x | x x x x | x x x x | x ...      i = 0, 1, 2 ... epoch_size - 1
    row 1 | x x x x | x x x x | x x x x | x ...      epoch_size = (batch_len - 1) // T
    ...   |<- T  ->|
    row B-1

Consecutive minibatches continue every row, which is why the hidden state is
carried from one minibatch to the next.
"""

import collections
import gzip
import hashlib
import lzma
import os
import zipfile
from dataclasses import dataclass, field

import numpy as np

from ..errors import RHNError

COMPRESSED = (".xz", ".gz")
EOS = "<eos>"  # appended to every line of a PTB file
PTB_HELP = (
    "set data_path=DIR, a folder with ptb.train.txt, ptb.valid.txt, ptb.test.txt (plain, .xz or .gz: "
    "no preparation needed), or run python data/prepare.py ptb to download and verify Mikolov's "
    "simple-examples.tgz into data/"
)


@dataclass
class Corpus:
    """Three id streams and what their ids mean."""

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    vocab_size: int
    unit: str  # 'word' or 'char': perplexity per word, bits per character
    symbols: object = None  # what each id stands for: a list of words (PTB) or an array of byte values
    dropped: dict = field(default_factory=dict)  # split -> (words left out as unknown, words in the file)


def find_file(path, what, hint):
    """``path`` itself or its .xz/.gz copy; a clear error naming ``hint`` otherwise."""
    for candidate in (path,) + tuple(path + ext for ext in COMPRESSED):
        if os.path.isfile(candidate):
            return candidate
    raise RHNError(f"{what} {path} not found (also tried .xz and .gz): {hint}")


def read_bytes(path):
    """Whole content of a plain, .xz or .gz file; a clear error if empty or corrupt."""
    opener = {".xz": lzma.open, ".gz": gzip.open}.get(os.path.splitext(path)[1], open)
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, lzma.LZMAError, gzip.BadGzipFile, OSError) as e:
        raise RHNError(f"cannot read {path}: truncated or corrupt ({e}); fetch the file again")
    if not data.strip():
        raise RHNError(f"{path} is empty; fetch the file again or point data_path elsewhere")
    return data


def ptb_words(path):
    """Tokens of a PTB file: whitespace-split, with <eos> at the end of each line."""
    try:
        text = read_bytes(path).decode("utf-8")
    except UnicodeDecodeError as e:
        raise RHNError(f"{path} is not a UTF-8 text file ({e}); is it really PTB?")
    return text.replace("\n", f" {EOS} ").split()


def build_vocab(words):
    """word -> id by descending count, ties alphabetical (the TF PTB reader's order)."""
    counts = collections.Counter(words)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return {word: i for i, (word, _) in enumerate(ranked)}


def words_to_ids(words, vocab):
    """Ids of the words in ``vocab``; others are dropped, as in the original."""
    return np.array([vocab[w] for w in words if w in vocab], dtype=np.int32)


def read_ptb(data_path):
    """PTB word ids (train, valid, test) with the vocabulary of the training file.

    Words of valid/test missing from the training vocabulary are dropped as the original did
    (Mikolov's files have none: rare words are already <unk>); ``Corpus.dropped`` counts them.
    """
    paths = [
        find_file(os.path.join(data_path, f"ptb.{split}.txt"), "PTB file", PTB_HELP)
        for split in ("train", "valid", "test")
    ]
    train_words = ptb_words(paths[0])
    vocab = build_vocab(train_words)
    ids, dropped = [words_to_ids(train_words, vocab)], {}
    for split, path in zip(("valid", "test"), paths[1:]):
        words = ptb_words(path)
        ids.append(words_to_ids(words, vocab))
        dropped[split] = (len(words) - len(ids[-1]), len(words))
        real = [w for w in words if w != EOS]  # <eos> ends every line of any file: it proves nothing
        if real and not any(w in vocab for w in real):
            raise RHNError(
                f"none of the {len(real)} words of {path} occurs in {paths[0]}: the {split} file "
                f"is not from the same corpus as the training file; check data_path"
            )
    return Corpus(*ids, len(vocab), "word", sorted(vocab, key=vocab.get), dropped)


def fingerprint(corpus):
    """SHA-256 of the id streams (train, valid, test) and their meaning: what a model was trained on."""
    digest = hashlib.sha256(f"{corpus.unit} {corpus.vocab_size}".encode())
    for ids in (corpus.train, corpus.valid, corpus.test):
        digest.update(f" {len(ids)} ".encode())  # the id dtype is fixed per dataset (int32 words, uint8 bytes)
        for i in range(0, len(ids), 1 << 24):  # in chunks: a memory-mapped enwik8 stays on disk
            digest.update(np.ascontiguousarray(ids[i : i + (1 << 24)]).tobytes())
    return digest.hexdigest()


def byte_ids(data):
    """Ids of bytes = rank of each byte value among the values present (as np.unique
    over the whole file in the original), as uint8, and the sorted byte values."""
    data = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray)) else data
    # In chunks: bincount and fancy indexing make int64 copies (800 MB for enwik8 at once).
    chunks = range(0, len(data), 1 << 22)
    counts = sum(np.bincount(data[i : i + (1 << 22)], minlength=256) for i in chunks)
    present = np.asarray(counts) > 0
    table = (np.cumsum(present) - 1).astype(np.uint8)  # byte value -> rank
    ids = np.empty(len(data), dtype=np.uint8)
    for i in chunks:
        ids[i : i + (1 << 22)] = table[data[i : i + (1 << 22)]]
    return ids, np.flatnonzero(present).astype(np.uint8)


def split_byte_corpus(ids, values, num_test_symbols, path):
    """The original split by position: all but the last 2 x num_test_symbols for training."""
    n = len(ids) - 2 * num_test_symbols
    if n <= 0:
        raise RHNError(
            f"{path} has {len(ids)} symbols, fewer than valid + test "
            f"(2 x num_test_symbols={num_test_symbols}); the file is truncated "
            f"or num_test_symbols is too large"
        )
    return Corpus(ids[:n], ids[n : n + num_test_symbols], ids[n + num_test_symbols :], len(values), "char", values)


def read_zip_member(zip_path, name):
    """The bytes of member ``name`` of a zip archive, with a clear error if it is not there."""
    try:
        with zipfile.ZipFile(zip_path) as z:
            if name not in z.namelist():
                raise RHNError(
                    f"{zip_path} has no member {name!r} (it has {', '.join(z.namelist()[:5])}): "
                    f"is it {name}.zip from mattmahoney.net/dc?"
                )
            return z.read(name)
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise RHNError(f"cannot read {zip_path}: not a complete zip archive ({e}); fetch it again")


def prepared_paths(data_path, name):
    """Where ``data/prepare.py`` puts a corpus: ids (uint8 .npy) and its byte values."""
    return os.path.join(data_path, f"{name}.ids.npy"), os.path.join(data_path, f"{name}.values.npy")


def read_byte_corpus(data_path, name, num_test_symbols, hint):
    """enwik8 / text8 ids: the prepared cache, memory-mapped (seconds, ~no memory), else
    the raw file ``<name>`` (plain, .xz, .gz) or ``<name>.zip``, converted in memory."""
    ids_path, values_path = prepared_paths(data_path, name)
    if os.path.isfile(ids_path) and os.path.isfile(values_path):
        try:
            ids = np.load(ids_path, mmap_mode="r")
            values = np.load(values_path)
        except (OSError, ValueError) as e:
            raise RHNError(f"cannot read prepared {ids_path} ({e}): run python data/prepare.py {name} again")
        return split_byte_corpus(ids, values, num_test_symbols, ids_path)
    zip_path = os.path.join(data_path, f"{name}.zip")
    if os.path.isfile(zip_path) and not any(
        os.path.isfile(os.path.join(data_path, name) + e) for e in ("",) + COMPRESSED
    ):
        data = read_zip_member(zip_path, name)
    else:
        path = find_file(os.path.join(data_path, name), "data file", hint)
        data = read_bytes(path)
    ids, values = byte_ids(data)
    return split_byte_corpus(ids, values, num_test_symbols, os.path.join(data_path, name))


def read_chars(path):
    """Any text file at byte level: first 90 % train, then 5 % valid and 5 % test."""
    ids, values = byte_ids(read_bytes(find_file(path, "text file", "set data_path=FILE")))
    n_eval = len(ids) // 20
    n = len(ids) - 2 * n_eval
    return Corpus(ids[:n], ids[n : n + n_eval], ids[n + n_eval :], len(values), "char", values)


def load_corpus(cfg):
    """The corpus named by ``cfg['dataset']``, checked against ``cfg['vocab_size']``."""
    dataset, data_path = cfg["dataset"], cfg["data_path"]
    if dataset == "ptb":
        corpus = read_ptb(data_path)
    elif dataset in ("enwik8", "text8"):
        hint = (
            f"run python data/prepare.py {dataset} (or put {dataset}.zip from mattmahoney.net/dc "
            f"into {data_path}), or set data_path=DIR"
        )
        corpus = read_byte_corpus(data_path, dataset, cfg["num_test_symbols"], hint)
    elif dataset == "chars":
        corpus = read_chars(data_path)
    else:
        raise RHNError(f"unknown dataset {dataset!r}: use ptb, enwik8, text8 or chars")
    if cfg["vocab_size"] and corpus.vocab_size != cfg["vocab_size"]:
        raise RHNError(
            f"{dataset} data in {data_path} has {corpus.vocab_size} distinct "
            f"{corpus.unit}s but vocab_size={cfg['vocab_size']}: the file is truncated "
            f"or not the expected corpus (or set vocab_size={corpus.vocab_size})"
        )
    return corpus


def batch_rows(ids, batch_size):
    """B x (N // B) array: the stream cut into ``batch_size`` contiguous rows."""
    batch_len = len(ids) // batch_size
    # A view when ids is a (memory-mapped) array: 90 M uint8 ids stay 90 MB, not 720.
    return np.asarray(ids[: batch_size * batch_len]).reshape(batch_size, batch_len)


def epoch_size(rows, num_steps):
    """Number of minibatches of one pass: (batch_len - 1) // T."""
    return (rows.shape[1] - 1) // num_steps


def check_batchable(ids, batch_size, num_steps, split):
    """A clear error when a split is too short for even one B x T minibatch."""
    if epoch_size(batch_rows(ids, batch_size), num_steps) < 1:
        need = batch_size * (num_steps + 1)
        raise RHNError(
            f"the {split} split has {len(ids)} tokens, too short for batch_size={batch_size} "
            f"x num_steps={num_steps} (needs >= {need}); lower batch_size or num_steps"
        )


def minibatch(rows, i, num_steps):
    """Inputs and targets (each B x T) of minibatch ``i``."""
    start = i * num_steps
    return rows[:, start : start + num_steps], rows[:, start + 1 : start + num_steps + 1]


def stream_windows(ids, num_steps):
    """The whole stream as one row (B = 1) in windows of ``num_steps``, the last one shorter.

    Every one of the N - 1 next-token predictions is scored exactly once, so the
    result equals that of the original's T = 1 pass whatever ``num_steps`` is.
    """
    row = np.asarray(ids)[None, :]
    for start in range(0, row.shape[1] - 1, num_steps):
        stop = min(start + num_steps, row.shape[1] - 1)
        yield row[:, start:stop], row[:, start + 1 : stop + 1]
