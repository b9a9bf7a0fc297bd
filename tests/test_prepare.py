"""enwik8 / text8 / PTB preparation on synthetic files of the exact formats (and the real PTB)."""

import gzip
import hashlib
import lzma
import os
import subprocess
import sys
import tarfile
import zipfile

import numpy as np
import pytest

from conftest import PTB_MISSING, REPO, SHARED_DATA, byte_corpus, run_experiment
from rhn_core.data import readers
from rhn_core.errors import RHNError
from rhn_core.data.fetch import prepare_byte_corpus, prepare_ptb


def expected_of(path, classes):
    data = open(path, "rb").read()
    return dict(url=None, size=len(data), sha256=hashlib.sha256(data).hexdigest(), classes=classes)


@pytest.fixture
def enwik8_like(tmp_path):
    raw = tmp_path / "src" / "enwik8"
    raw.parent.mkdir()
    byte_corpus(raw, 205, 5000, seed=3)
    archive = tmp_path / "src" / "enwik8.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(raw, "enwik8")
    return raw, archive, expected_of(raw, 205)


@pytest.mark.parametrize("from_zip", [True, False])
def test_prepared_cache_is_memory_mapped_and_equals_the_original_mapping(enwik8_like, tmp_path, from_zip):
    raw, archive, expected = enwik8_like
    out = tmp_path / "data"
    prepare_byte_corpus("enwik8", str(out), str(archive if from_zip else raw), expected, progress=False)
    corpus = readers.read_byte_corpus(str(out), "enwik8", 500, "hint")
    assert isinstance(corpus.train, np.memmap) and corpus.train.dtype == np.uint8
    # the original: np.unique over the whole file, ids = index of each byte's value
    values, inverse = np.unique(np.frombuffer(raw.read_bytes(), dtype=np.uint8), return_inverse=True)
    assert corpus.vocab_size == len(values) == 205
    np.testing.assert_array_equal(np.concatenate([corpus.train, corpus.valid, corpus.test]), inverse)
    assert (len(corpus.train), len(corpus.valid), len(corpus.test)) == (4000, 500, 500)


def test_raw_zip_in_data_path_is_read_directly(enwik8_like, tmp_path):
    raw, archive, _ = enwik8_like
    folder = tmp_path / "zip_only"
    folder.mkdir()
    os.replace(archive, folder / "enwik8.zip")
    corpus = readers.read_byte_corpus(str(folder), "enwik8", 500, "hint")
    assert corpus.vocab_size == 205 and len(corpus.test) == 500


@pytest.mark.parametrize(
    "damage, match",
    [
        ("checksum", r"sha256 is [0-9a-f]+, the published one is 0+: the file is corrupt"),
        ("truncated", r"has 4,000 bytes, the published file has 5,000: truncated"),
        ("bad_zip", r"not a complete zip archive"),
        ("wrong_member", r"has no member 'enwik8'"),
    ],
)
def test_damaged_sources_are_refused_and_nothing_is_written(enwik8_like, tmp_path, damage, match):
    raw, archive, expected = enwik8_like
    source = archive
    if damage == "checksum":
        expected = dict(expected, sha256="0" * 64)
    elif damage == "truncated":
        source = tmp_path / "enwik8"
        source.write_bytes(raw.read_bytes()[:4000])
    elif damage == "bad_zip":
        source = tmp_path / "enwik8.zip"
        source.write_bytes(archive.read_bytes()[:300])
    else:
        source = tmp_path / "other.zip"
        with zipfile.ZipFile(source, "w") as z:
            z.writestr("text8", b"abc")
    out = tmp_path / "data"
    with pytest.raises(RHNError, match=match):
        prepare_byte_corpus("enwik8", str(out), str(source), expected, progress=False)
    assert not out.exists() or not os.listdir(out)


def test_command_line_error_is_one_line(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "data", "prepare.py"),
            "text8",
            "--from",
            str(tmp_path / "missing.zip"),
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "missing.zip not found: give the path of text8.zip" in result.stderr


def test_real_file_checksums_are_the_published_ones(tmp_path):
    # a text8-like file with the right size but other content is refused by its checksum
    fake = tmp_path / "text8"
    fake.write_bytes(b"a" * 100_000_000)
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "data", "prepare.py"),
            "text8",
            "--from",
            str(fake),
            "--data-dir",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "6e890197040d37d85beb962ae1f041ff1d9a9ca8d20c7d99c85027eebf51dca7" in result.stderr


def test_training_from_a_prepared_cache(enwik8_like, tmp_path):
    pytest.importorskip("torch")  # the run trains with the torch backend
    raw, archive, expected = enwik8_like
    prepare_byte_corpus("enwik8", str(tmp_path / "data"), str(archive), expected, progress=False)
    run = run_experiment(
        named=["enwik8_sota", "tiny"],
        data_path=str(tmp_path / "data"),
        num_test_symbols=500,
        save_dir=str(tmp_path / "run"),
    )
    assert np.isfinite(run.result) and run.info["nr_parameters"] > 0


def ptb_sources(tmp_path):
    if not all(os.path.isfile(os.path.join(SHARED_DATA, f"ptb.{s}.txt.xz")) for s in ("train", "valid", "test")):
        pytest.skip(PTB_MISSING)
    folder = tmp_path / "plain"
    folder.mkdir()
    for split in ("train", "valid", "test"):
        (folder / f"ptb.{split}.txt").write_bytes(lzma.open(os.path.join(SHARED_DATA, f"ptb.{split}.txt.xz")).read())
    archive = tmp_path / "simple-examples.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        for split in ("train", "valid", "test"):
            tar.add(folder / f"ptb.{split}.txt", f"simple-examples/data/ptb.{split}.txt")
    return folder, archive


def test_ptb_from_the_archive_or_a_folder(tmp_path):
    folder, archive = ptb_sources(tmp_path)
    for source, out in ((archive, tmp_path / "a"), (folder, tmp_path / "b")):
        written = prepare_ptb(str(out), str(source), progress=False)
        assert [os.path.getsize(p) for p in written] == [5101618, 399782, 449945]
    assert readers.read_ptb(str(tmp_path / "a")).vocab_size == 10000


def test_ptb_from_what_the_reader_accepts(tmp_path, ptb_dir):
    """The shared folder of ptb.*.txt.xz, one of its files, a folder of .gz copies: as a run reads them."""
    gz = tmp_path / "gz"
    gz.mkdir()
    for split in ("train", "valid", "test"):
        (gz / f"ptb.{split}.txt.gz").write_bytes(
            gzip.compress(lzma.open(os.path.join(ptb_dir, f"ptb.{split}.txt.xz")).read())
        )
    sources = (ptb_dir, os.path.join(ptb_dir, "ptb.valid.txt.xz"), str(gz))
    for i, source in enumerate(sources):
        written = umask_022(prepare_ptb, str(tmp_path / f"out{i}"), source, progress=False)
        assert [os.path.getsize(p) for p in written] == [5101618, 399782, 449945]
        assert {oct(os.stat(p).st_mode & 0o777) for p in written} == {"0o644"}  # others can read them


def umask_022(prepare, *args, **kwargs):
    old = os.umask(0o022)
    try:
        return prepare(*args, **kwargs)
    finally:
        os.umask(old)


def test_prepared_files_are_readable_by_others(tmp_path, enwik8_like):
    """Written like any new file (umask 022 -> rw-r--r--), not private as tempfile.mkstemp makes them."""
    raw, archive, expected = enwik8_like
    umask_022(prepare_byte_corpus, "enwik8", str(tmp_path / "e"), str(archive), expected, progress=False)
    written = sorted((tmp_path / "e").iterdir())
    assert [p.name for p in written] == ["enwik8.ids.npy", "enwik8.values.npy"]
    assert {oct(p.stat().st_mode & 0o777) for p in written} == {"0o644"}


@pytest.mark.parametrize("content", [b"not an archive", lzma.compress(b"a few words\n")])
def test_ptb_source_that_is_no_archive_is_a_one_line_error(tmp_path, content):
    source = tmp_path / "something.xz"
    source.write_bytes(content)
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "data", "prepare.py"),
            "ptb",
            "--from",
            str(source),
            "--data-dir",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"RHNError: cannot read {source} as an archive")
    assert "a folder holding ptb.train.txt" in result.stderr
    assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []


def test_missing_ptb_says_how_to_get_it(tmp_path):
    with pytest.raises(
        RHNError,
        match=r"not found .*plain, \.xz or \.gz: no preparation needed.*"
        r"python data/prepare.py ptb",
    ):
        readers.read_ptb(str(tmp_path))


def test_ptb_that_is_not_mikolovs_is_refused(tmp_path, synthetic_ptb):
    with pytest.raises(RHNError, match=r"ptb.train.txt md5 is [0-9a-f]+, Mikolov's is f26c4b92"):
        prepare_ptb(str(tmp_path / "out"), synthetic_ptb, progress=False)
    assert not (tmp_path / "out" / "ptb.train.txt").exists()


@pytest.mark.slow
def test_character_level_run_on_ptb_text(tmp_path):
    pytest.importorskip("torch")
    path = os.path.join(SHARED_DATA, "ptb.valid.txt.xz")
    if not os.path.isfile(path):
        pytest.skip(PTB_MISSING)
    run = run_experiment(
        dataset="chars",
        data_path=path,
        hidden_size=64,
        depth=2,
        batch_size=32,
        num_steps=50,
        max_max_epoch=4,
        max_epoch=4,
        tied=False,
        init_bias=-4.0,
        drop_x=0.0,
        drop_i=0.1,
        drop_h=0.0,
        drop_o=0.1,
        learning_rate=0.5,
        save_dir=str(tmp_path),
    )
    corpus = readers.read_chars(path)
    uniform_bits = np.log2(corpus.vocab_size)
    assert run.info["best_valid_bits"] < uniform_bits - 1.0  # well below guessing uniformly
    # and exactly what the NumPy reference gives for the kept weights (a wrong loss scale would
    # also be "below uniform"): mean NLL per character, in bits
    import oracle
    from rhn_core.checkpoint import load_checkpoint
    from rhn_core.params import spec_from_config

    params, _ = load_checkpoint(str(tmp_path / "best.npz"))
    expected = oracle.batched_perplexity(params, spec_from_config(run.config, corpus.vocab_size), corpus.valid, 32, 50)
    assert run.info["best_valid_perplexity"] == pytest.approx(expected, rel=1e-4)  # float32 run
    assert run.info["best_valid_bits"] == pytest.approx(np.log2(expected), rel=1e-4)


def test_offline_download_is_a_clear_error_and_leaves_nothing(tmp_path, monkeypatch):
    import urllib.request

    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(RHNError, match=r"cannot download http://mattmahoney.net/dc/enwik8.zip .*--from FILE"):
        prepare_byte_corpus("enwik8", str(tmp_path), progress=False)
    assert os.listdir(tmp_path) == []


# --- fetch.py in process: the download, the source forms and every one-line error ---------------------
class Response:
    """What urllib.request.urlopen gives: headers and blocks of the body."""

    def __init__(self, body, length=True):
        self.body, self.headers = body, {"Content-Length": str(len(body))} if length else {}
        self.reads = []

    def read(self, n=None):
        self.reads.append(n)
        n = len(self.body) if n is None or n < 0 else n  # as http.client's: None reads the rest
        block, self.body = self.body[:n], self.body[n:]
        return block

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_download_writes_the_whole_file_under_its_name(tmp_path, monkeypatch):
    import urllib.request

    from rhn_core.data import fetch

    body = bytes(range(256)) * 40
    calls = []

    def urlopen(url, timeout):
        calls.append((url, timeout))
        return responses.pop(0)

    responses = [Response(body), Response(body, length=False)]
    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    monkeypatch.setattr(fetch, "CHUNK", 1000)
    target = fetch.download("http://example.org/dc/corpus.zip", str(tmp_path), progress=False)
    assert target == str(tmp_path / "corpus.zip") and (tmp_path / "corpus.zip").read_bytes() == body
    assert calls == [("http://example.org/dc/corpus.zip", 30)] and os.listdir(tmp_path) == ["corpus.zip"]
    again = fetch.download("http://example.org/dc/corpus.zip", str(tmp_path / "b"), progress=True)
    assert open(again, "rb").read() == body  # no Content-Length: the bar has no total, the file is whole


def test_sources_and_their_one_line_errors(tmp_path, enwik8_like):
    from rhn_core.data import fetch

    raw, archive, expected = enwik8_like
    assert fetch.read_source(str(raw), "enwik8") == raw.read_bytes()
    assert fetch.read_source(str(archive), "enwik8") == raw.read_bytes()
    renamed = tmp_path / "enwik8.data"  # a zip by its first bytes, whatever its name
    renamed.write_bytes(archive.read_bytes())
    assert fetch.read_source(str(renamed), "enwik8") == raw.read_bytes()
    with pytest.raises(RHNError) as e:
        fetch.read_source(str(tmp_path / "nowhere.zip"), "text8")
    assert str(e.value) == f"{tmp_path / 'nowhere.zip'} not found: give the path of text8.zip or of the unzipped text8"
    data = b"abcd"
    with pytest.raises(RHNError) as e:
        fetch.verify(data, "text8", {"size": 5, "sha256": ""})
    assert str(e.value) == (
        "text8 has 4 bytes, the published file has 5: truncated or a different file; fetch text8.zip again"
    )
    with pytest.raises(RHNError) as e:
        fetch.verify(data, "text8", {"size": 4, "sha256": "0" * 64})
    digest = hashlib.sha256(data).hexdigest()
    assert str(e.value) == (
        f"text8 sha256 is {digest}, the published one is {'0' * 64}: the file is corrupt or not text8; "
        "fetch text8.zip again"
    )
    fetch.verify(data, "text8", {"size": 4, "sha256": digest})
    with pytest.raises(RHNError) as e:
        prepare_byte_corpus("enwik8", str(tmp_path / "out"), str(raw), dict(expected, classes=27), progress=False)
    assert str(e.value) == "enwik8 has 205 distinct bytes, expected 27"
    assert not os.listdir(tmp_path / "out")


def test_byte_corpus_downloaded_when_no_source_is_given(tmp_path, enwik8_like, monkeypatch):
    from rhn_core.data import fetch

    raw, archive, expected = enwik8_like
    fetched = []

    def download(url, folder, progress=True):
        fetched.append((url, folder, progress))
        return str(archive)

    monkeypatch.setattr(fetch, "download", download)
    monkeypatch.setitem(fetch.CORPORA, "enwik8", dict(expected, url="http://example.org/enwik8.zip"))
    ids_path, n, classes = prepare_byte_corpus("enwik8", str(tmp_path / "out"), progress=False)
    assert fetched == [("http://example.org/enwik8.zip", str(tmp_path / "out"), False)]
    assert (n, classes) == (5000, 205) and ids_path == readers.prepared_paths(str(tmp_path / "out"), "enwik8")[0]
    values = np.load(readers.prepared_paths(str(tmp_path / "out"), "enwik8")[1])
    np.testing.assert_array_equal(values[np.load(ids_path)], np.frombuffer(raw.read_bytes(), np.uint8))


def test_ptb_sources_in_every_form_and_their_errors(tmp_path, synthetic_ptb, monkeypatch):
    from rhn_core.data import fetch

    files = fetch.ptb_files(synthetic_ptb)
    assert sorted(files) == ["test", "train", "valid"]
    one = os.path.join(synthetic_ptb, sorted(n for n in os.listdir(synthetic_ptb) if n.startswith("ptb.train"))[0])
    assert fetch.ptb_files(one) == files  # one of the files: its folder is read
    archive = tmp_path / "simple-examples.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        for split in ("train", "valid", "test"):
            (tmp_path / f"ptb.{split}.txt").write_bytes(files[split])
            tar.add(tmp_path / f"ptb.{split}.txt", f"simple-examples/data/ptb.{split}.txt")
    assert fetch.ptb_files(str(archive)) == files
    partial = tmp_path / "partial.tgz"
    with tarfile.open(partial, "w:gz") as tar:
        tar.add(tmp_path / "ptb.train.txt", "data/ptb.train.txt")
    with pytest.raises(RHNError) as e:
        fetch.ptb_files(str(partial))
    assert str(e.value) == f"{partial} has no ptb.valid.txt: is it Mikolov's simple-examples.tgz?"
    with pytest.raises(RHNError) as e:
        fetch.ptb_files(str(tmp_path / "absent"))
    assert str(e.value) == f"{tmp_path / 'absent'} not found: give {fetch.PTB_SOURCES}"
    assert fetch.PTB_FILE.match("ptb.valid.txt.xz") and not fetch.PTB_FILE.match("ptb.valid.txt.zip")
    monkeypatch.setitem(fetch.PTB_MD5, "train", hashlib.md5(files["train"]).hexdigest())
    monkeypatch.setitem(fetch.PTB_MD5, "valid", hashlib.md5(files["valid"]).hexdigest())
    monkeypatch.setitem(fetch.PTB_MD5, "test", hashlib.md5(files["test"]).hexdigest())
    fetched = []
    monkeypatch.setattr(
        fetch, "download", lambda url, folder, progress: fetched.append((url, folder, progress)) or str(archive)
    )
    (tmp_path / "out").mkdir()  # an existing data folder is fine
    written = prepare_ptb(str(tmp_path / "out"), progress=False)
    assert fetched == [(fetch.PTB_URL, str(tmp_path / "out"), False)]
    assert written == [str(tmp_path / "out" / f"ptb.{s}.txt") for s in ("train", "valid", "test")]
    assert [open(p, "rb").read() for p in written] == [files[s] for s in ("train", "valid", "test")]


def test_ptb_sources_that_are_incomplete_or_not_archives_say_so(tmp_path, synthetic_ptb):
    from rhn_core.data import fetch

    folder = tmp_path / "only_train"
    folder.mkdir()
    train = sorted(n for n in os.listdir(synthetic_ptb) if n.startswith("ptb.train"))[0]
    (folder / train).write_bytes(open(os.path.join(synthetic_ptb, train), "rb").read())
    with pytest.raises(RHNError) as e:
        fetch.ptb_files(str(folder))
    assert str(e.value) == (
        f"PTB file {folder / 'ptb.valid.txt'} not found (also tried .xz and .gz): give {fetch.PTB_SOURCES}"
    )
    source = tmp_path / "notes.tgz"
    source.write_bytes(b"not an archive")
    with pytest.raises(RHNError) as e:
        fetch.ptb_files(str(source))
    reason = str(e.value).split(" as an archive (")[1].split("): give ")[0]
    assert str(e.value).startswith(f"cannot read {source} as an archive (") and str(e.value).endswith(
        f"): give {fetch.PTB_SOURCES}"
    )
    # tarfile's first line, not the list of every method it tried that follows it
    assert reason and "\n" not in reason and "method" not in reason and not reason.endswith(":")


def test_a_zip_by_its_name_and_the_corpus_named_in_its_errors(tmp_path, enwik8_like):
    raw, archive, expected = enwik8_like
    named = tmp_path / "enwik8.zip"
    named.write_bytes(b"not a zip, whatever its name says")
    with pytest.raises(RHNError, match=f"cannot read {named}: not a complete zip archive"):
        prepare_byte_corpus("enwik8", str(tmp_path / "a"), str(named), expected, progress=False)
    with pytest.raises(RHNError, match=r"^enwik8 sha256 is [0-9a-f]{64}, the published one is 0{64}: "):
        prepare_byte_corpus("enwik8", str(tmp_path / "b"), str(raw), dict(expected, sha256="0" * 64), progress=False)
