"""Passwords in URLs: found, redacted, and kept away from everything a run stores.

A run's config, its command line and its options are printed and handed to
every observer (the MongoDB document, ``-F``'s ``config.json`` and
``run.json``). ``check_run_inputs`` refuses a run before any observer sees it
when any of them holds a URL with ``user:password@`` (whatever the key:
``resume``, ``load_model``, ``data_path``, ``save_dir``...). The one place a
password may be given is ``-m``, whose value is redacted before it is stored.
"""

import re

from ..errors import RHNError

# scheme://user:password@ -- detection is deliberately loose (a password with an unescaped '/'
# or '?' still counts), so a URL that is not quite valid cannot slip a password through.
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://)([^\s@:/]*):([^\s@]*)@")


RESUME_ADVICE = (
    "resume= must not hold a password (the config is stored with the run): give the server with "
    "-m mongodb://user:password@... (redacted when stored) and write resume=#ID"
)


def has_password(text):
    """Whether ``text`` holds a URL with ``user:password@``."""
    return _USERINFO.search(str(text)) is not None


def redact(text):
    """``text`` with the password of every URL in it replaced by ``***``."""
    return _USERINFO.sub(lambda m: f"{m.group(1)}{m.group(2)}:***@", str(text))


def find_password(value, where):
    """(where, offending text) of the first string holding a password in a nested value, else None."""
    if isinstance(value, dict):
        items = ((f"{where}.{k}" if where else str(k), v) for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(value))
    else:
        return (where, str(value)) if has_password(value) else None
    for sub_where, sub_value in items:
        found = find_password(sub_value, sub_where)
        if found:
            return found
    return None


def check_run_inputs(config, meta_info):
    """Refuse (one line, before any observer starts) a config or command line holding a password."""
    found = (
        find_password(config, "")
        or find_password(meta_info.get("options", {}), "")
        or find_password(meta_info, "the run's meta information")
    )
    if not found:
        return
    where, text = found
    if where == "resume":
        raise RHNError(RESUME_ADVICE)
    raise RHNError(
        f"{where} holds a password ({redact(text)}): the config and command line are printed and "
        f"stored with the run; remove it (a MongoDB password belongs only in -m, which is redacted)"
    )
