"""Dataset fetching: download or import, verify, and cache enwik8 / text8 / PTB (the module behind ``data/prepare.py``).

enwik8 and text8 become ``<name>.ids.npy`` (uint8 class ids of the whole file, as the
original's np.unique mapping) plus ``<name>.values.npy`` (the byte values), which the
reader memory-maps: loading takes seconds and costs no more memory than what a run
touches. PTB becomes the three plain ``ptb.*.txt`` files. Every file is verified
against the published size and checksum before anything is written, and written to
a temporary name first, then renamed: a data folder never holds half a file.
"""

import hashlib
import os
import re
import tarfile
import urllib.request

import numpy as np

from ..atomic import atomic_file
from ..errors import RHNError
from ..progress import progress_bar
from .readers import COMPRESSED, byte_ids, find_file, prepared_paths, read_bytes, read_zip_member

# Published sizes and checksums (docs/data.md lists them).
CORPORA = {
    "enwik8": dict(
        url="http://mattmahoney.net/dc/enwik8.zip",
        size=100_000_000,
        classes=205,
        sha256="2b49720ec4d78c3c9fabaee6e4179a5e997302b3a70029f30f2d582218c024a8",
    ),
    "text8": dict(
        url="http://mattmahoney.net/dc/text8.zip",
        size=100_000_000,
        classes=27,
        sha256="6e890197040d37d85beb962ae1f041ff1d9a9ca8d20c7d99c85027eebf51dca7",
    ),
}
PTB_URL = "http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz"
PTB_MD5 = {
    "train": "f26c4b92c5fdc7b3f8c7cdcb991d8420",
    "valid": "aa0affc06ff7c36e977d7cd49e3839bf",
    "test": "8b80168b89c18661a38ef683c0dc3721",
}
CHUNK = 1 << 22


def download(url, folder, progress=True):
    """Fetch ``url`` into ``folder`` (atomically); a clear error when offline."""
    target = os.path.join(folder, os.path.basename(url))
    try:
        with urllib.request.urlopen(url, timeout=30) as response, atomic_file(target) as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with progress_bar(
                total=total,
                unit="B",
                unit_scale=True,
                desc=f"downloading {os.path.basename(url)}",
                disable=not progress,
            ) as bar:
                for block in iter(lambda: response.read(CHUNK), b""):
                    out.write(block)
                    bar.update(len(block))
    except OSError as e:
        raise RHNError(f"cannot download {url} ({e}); download it elsewhere and run again with --from FILE")
    return target


def read_source(source, name):
    """The raw corpus from a zip archive or the unzipped file."""
    if not os.path.isfile(source):
        raise RHNError(f"{source} not found: give the path of {name}.zip or of the unzipped {name}")
    with open(source, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04" or source.endswith(".zip")
    if is_zip:
        return read_zip_member(source, name)
    with open(source, "rb") as f:
        return f.read()


def verify(data, name, expected):
    """Size and sha256 against the published values; a clear error naming the mismatch."""
    if len(data) != expected["size"]:
        raise RHNError(
            f"{name} has {len(data):,} bytes, the published file has {expected['size']:,}: "
            f"truncated or a different file; fetch {name}.zip again"
        )
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected["sha256"]:
        raise RHNError(
            f"{name} sha256 is {digest}, the published one is {expected['sha256']}: "
            f"the file is corrupt or not {name}; fetch {name}.zip again"
        )


def save_npy_atomically(path, array):
    with atomic_file(path) as f:
        np.save(f, array)


def prepare_byte_corpus(name, data_dir, source=None, expected=None, progress=True):
    """Verify ``source`` (zip or raw; downloaded when None) and write the id cache."""
    expected = expected or CORPORA[name]
    os.makedirs(data_dir, exist_ok=True)
    if source is None:
        source = download(expected["url"], data_dir, progress)
    data = read_source(source, name)
    verify(data, name, expected)
    ids, values = byte_ids(data)
    if len(values) != expected["classes"]:
        raise RHNError(f"{name} has {len(values)} distinct bytes, expected {expected['classes']}")
    ids_path, values_path = prepared_paths(data_dir, name)
    save_npy_atomically(values_path, values)
    save_npy_atomically(ids_path, ids)  # last: its presence marks a complete preparation
    return ids_path, len(ids), len(values)


PTB_SOURCES = (
    "simple-examples.tgz, a folder holding ptb.train.txt, ptb.valid.txt, ptb.test.txt "
    "(plain, .xz or .gz, as a run reads them), or one of those files"
)
PTB_FILE = re.compile(r"^ptb\.(train|valid|test)\.txt(" + "|".join(re.escape(e) for e in COMPRESSED) + ")?$")


def ptb_files(source):
    """split -> bytes of ptb.<split>.txt from what a run's reader accepts (a folder of plain, .xz or .gz
    files, or one of those files: its folder is read) or from Mikolov's simple-examples.tgz."""
    if not os.path.exists(source):
        raise RHNError(f"{source} not found: give {PTB_SOURCES}")
    if os.path.isfile(source) and PTB_FILE.match(os.path.basename(source)):
        source = os.path.dirname(os.path.abspath(source))
    if os.path.isdir(source):
        return {
            split: read_bytes(find_file(os.path.join(source, f"ptb.{split}.txt"), "PTB file", f"give {PTB_SOURCES}"))
            for split in PTB_MD5
        }
    try:
        with tarfile.open(source) as tar:
            members = {os.path.basename(m.name): m for m in tar.getmembers() if m.isfile()}
            return {split: tar.extractfile(members[f"ptb.{split}.txt"]).read() for split in PTB_MD5}
    except KeyError as e:
        raise RHNError(f"{source} has no {e.args[0]}: is it Mikolov's simple-examples.tgz?")
    except (tarfile.TarError, OSError, EOFError) as e:
        reason = str(e).splitlines()[0].rstrip(":")  # tarfile lists every method it tried, one per line
        raise RHNError(f"cannot read {source} as an archive ({reason}): give {PTB_SOURCES}")


def prepare_ptb(data_dir, source=None, progress=True):
    """Verify the three PTB files (md5) and write them, plain, into ``data_dir``."""
    os.makedirs(data_dir, exist_ok=True)
    if source is None:
        source = download(PTB_URL, data_dir, progress)
    files = ptb_files(source)
    for split, data in files.items():
        digest = hashlib.md5(data).hexdigest()
        if digest != PTB_MD5[split]:
            raise RHNError(f"ptb.{split}.txt md5 is {digest}, Mikolov's is {PTB_MD5[split]}: not the standard PTB file")
    written = []
    for split, data in files.items():
        written.append(os.path.join(data_dir, f"ptb.{split}.txt"))
        with atomic_file(written[-1]) as f:
            f.write(data)
    return written
