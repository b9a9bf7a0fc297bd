"""Where runs live in MongoDB: addresses, redaction, a connection that fails fast.

One address grammar serves ``-m``, ``resume=`` and the ``report``/``upload``
commands. It takes Sacred's forms (``db``, ``host:port``, ``host:port:db``,
``host:port:db.collection``, a ``!priority`` suffix) and, unlike Sacred 0.8.7,
MongoDB URLs (``mongodb://user:pw@host:27017/db?authSource=admin``,
``mongodb+srv://...``), whose path names the database (``sacred`` if none, as
Sacred's default).

Credentials stay in the ``MongoTarget`` that connects and nowhere else: every
printable form of an address goes through ``redact`` (``tracking.credentials``).
"""

import re
from dataclasses import dataclass, field

from ..errors import RHNError
from .credentials import has_password, redact  # noqa: F401  (part of this module's interface)

DEFAULT_DB = "sacred"  # Sacred's default database name
DEFAULT_PRIORITY = 30  # Sacred's MongoObserver priority
TIMEOUT_S = 5.0  # server selection and connect timeout: an absent server is reported in seconds

_NAME = r"[_A-Za-z][0-9A-Za-z_\-]{0,63}"
_SACRED_FORM = re.compile(
    rf"^(?:(?P<host>[0-9A-Za-z.\-]+):(?P<port>\d{{1,5}})(?::|$))?"
    rf"(?P<db>{_NAME})?(?:\.(?P<collection>{_NAME}))?(?::(?P<overwrite>\d+))?(?:!(?P<priority>-?\d+))?$"
)
_RESUME = re.compile(r"^(?P<db>.*)#(?P<run_id>\d+)$")


@dataclass(frozen=True)
class MongoTarget:
    """A database to log to: the URL (credentials included) never shows in ``repr``."""

    url: str = field(repr=False)
    db_name: str = DEFAULT_DB
    runs_collection: str = "runs"
    priority: int = DEFAULT_PRIORITY
    spec: str = field(default="", repr=False)  # as the user wrote it

    @property
    def display(self):
        """The server without the password, for messages."""
        return redact(self.url)

    @property
    def address(self):
        """The ``-m`` value without the password (stored in the run's options, printed in hints)."""
        return redact(self.spec or self.url)

    def __str__(self):
        return f"{self.display} (database {self.db_name})"


def parse_target(spec):
    """A ``MongoTarget`` from an ``-m`` value; a one-line error for anything else."""
    spec = str(spec).strip()
    if re.match(r"^mongodb(\+srv)?://", spec, re.IGNORECASE):
        from pymongo.errors import InvalidURI, ConfigurationError
        from pymongo.uri_parser import parse_uri

        try:
            db = parse_uri(spec, validate=True, connect_timeout=TIMEOUT_S)["database"]
        except (InvalidURI, ConfigurationError, ValueError) as e:
            raise RHNError(f"bad MongoDB URL {redact(spec)}: {redact(e)}")
        return MongoTarget(spec, db or DEFAULT_DB, spec=spec)
    m = _SACRED_FORM.match(spec)
    if not spec or not m or not (m["host"] or m["db"]):
        raise RHNError(
            f"bad MongoDB address {redact(spec)!r}: use db, host:port, host:port:db or a "
            f"mongodb://[user:password@]host:port/db URL"
        )
    if m["overwrite"]:
        raise RHNError(
            f"{spec}: overwriting run {m['overwrite']} is not supported; "
            f"drop ':{m['overwrite']}' (a resumed run is logged as a new run)"
        )
    url = f"mongodb://{m['host']}:{m['port']}" if m["host"] else "mongodb://localhost:27017"
    return MongoTarget(
        url,
        m["db"] or DEFAULT_DB,
        m["collection"] or "runs",
        int(m["priority"]) if m["priority"] else DEFAULT_PRIORITY,
        spec,
    )


def parse_resume(value):
    """(database spec or '', run id) when ``resume=`` names a run in MongoDB, else None."""
    m = _RESUME.match(str(value).strip())
    return (m["db"], int(m["run_id"])) if m else None


FALLBACK_ADVICE = (
    "; or add --mongo_fallback=DIR to keep the run on disk and upload it later with python -m rhn_core.tracking.upload"
)


def connect(target, timeout_s=TIMEOUT_S, fallback_advice=False):
    """(client, database) after a ping; RHNError in about ``timeout_s`` if the server is away (with
    ``fallback_advice``, a run's start without --mongo_fallback: the message names that option)."""
    import pymongo
    from pymongo.errors import OperationFailure, PyMongoError

    # Options written in the URL win over these defaults (pymongo lets keywords override the URL).
    options = {k.lower() for k in pymongo.uri_parser.parse_uri(target.url, validate=False)["options"]}
    timeouts = {
        k: int(timeout_s * 1000) for k in ("serverSelectionTimeoutMS", "connectTimeoutMS") if k.lower() not in options
    }
    if "sockettimeoutms" not in options:
        timeouts["socketTimeoutMS"] = 60_000  # a hung server fails an operation instead of blocking forever
    client = None
    try:
        client = pymongo.MongoClient(target.url, appname="rhn", **timeouts)
        client.admin.command("ping")
        database = client[target.db_name]
        database[target.runs_collection].find_one({}, {"_id": 1})  # credentials are checked here
        return client, database
    except OperationFailure as e:
        if client is not None:
            client.close()
        raise RHNError(
            f"MongoDB at {target.display} refused access to database {target.db_name!r} "
            f"({redact(e.details.get('errmsg', e) if e.details else e)}): check the user, "
            f"password and authSource in the URL"
        )
    except PyMongoError as e:
        if client is not None:
            client.close()
        reason = redact(re.split(r" \(configured timeouts|, Timeout:", str(e))[0])
        raise RHNError(
            f"cannot reach MongoDB at {target.display} within {timeout_s:g} s ({reason}): "
            f"start the server or fix the address" + (FALLBACK_ADVICE if fallback_advice else "")
        )
