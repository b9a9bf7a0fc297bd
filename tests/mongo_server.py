"""A real MongoDB-protocol server for the tests: SecantusDB in a child process.

``MongoServer`` starts ``python -m secantus`` (the PyPI package ``secantusdb``,
WiredTiger storage) on a free loopback port and can stop and restart it on the
same port and storage, which the fault tests need. ``RHN_TEST_MONGO_URL`` (a
``mongodb://`` URL, e.g. a genuine ``mongod``) makes the storage tests use that
server instead; tests that stop the server always run their own SecantusDB.
"""

import os
import socket
import subprocess
import sys
import time
import uuid

import pytest

EXTERNAL_URL = os.environ.get("RHN_TEST_MONGO_URL", "")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MongoServer:
    """A SecantusDB server process on 127.0.0.1 with its own storage folder."""

    def __init__(self, storage, port=None):
        self.storage, self.port, self.process = str(storage), port or free_port(), None

    @property
    def url(self):
        return f"mongodb://127.0.0.1:{self.port}"

    def spec(self, db):
        """The ``-m`` form of database ``db`` on this server."""
        return f"127.0.0.1:{self.port}:{db}"

    def start(self, timeout_s=60, auth=False):
        """Start (or restart, same port and storage); ``auth``: require SCRAM credentials."""
        pytest.importorskip("secantus", reason="SecantusDB not installed: pip install -e '.[mongo,test]'")
        import pymongo

        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "secantus",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--storage-path",
                self.storage,
                "--standalone",
                "--log-level",
                "ERROR",
                *(["--auth"] if auth else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"SecantusDB exited with {self.process.returncode} on port {self.port}")
            try:
                with pymongo.MongoClient(self.url, serverSelectionTimeoutMS=500) as client:
                    client.admin.command("ping")
                return self
            except pymongo.errors.PyMongoError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"SecantusDB did not answer on port {self.port} within {timeout_s} s")

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


class ExternalServer:
    """The server named by RHN_TEST_MONGO_URL (never stopped by the tests)."""

    url = EXTERNAL_URL

    def spec(self, db):
        base, _, query = self.url.partition("?")
        return f"{base.rstrip('/')}/{db}" + (f"?{query}" if query else "")


def unique_db():
    """A fresh database name per test, so tests never see each other's runs."""
    return f"rhn_test_{uuid.uuid4().hex[:10]}"
