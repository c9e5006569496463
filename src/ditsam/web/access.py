"""Who may use the web demo: ``user:password`` credentials for Gradio's login page (from the command
line or a file) and the loopback test behind the warning for a demo served to the network without them.

Error messages name where a bad value came from but never echo it: it may hold a password.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

#: Host names that always mean this machine; any other name may resolve to a public interface.
LOOPBACK_NAMES = frozenset({"localhost"})
#: Lines of an auth file that start with this are comments.
COMMENT_PREFIX = "#"

Credentials = tuple[str, str]


def parse_credentials(value: str, *, source: str) -> Credentials:
    """``(user, password)`` from ``user:password``; the password may hold ``:``, the user may not.

    ``source`` says where the value came from (``--auth``, ``auth.txt, line 2``) for the error, a
    ValueError that does not repeat the value.
    """
    user, colon, password = value.partition(":")
    if not colon:
        problem = "a value without ':'"
    elif not user.strip():
        problem = "an empty user name"
    elif not password:
        problem = "an empty password"
    else:
        return user.strip(), password
    raise ValueError(f"{source}: expected user:password (a user name, ':', a password), got {problem}")


def read_credentials(path: str | os.PathLike) -> list[Credentials]:
    """Every ``user:password`` line of an auth file (blank lines and ``#`` comments are skipped).

    Raises FileNotFoundError for a missing file and ValueError, naming the file and line, for a
    malformed line, a user named twice or a file without credentials.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"auth file {path} does not exist (expected a file holding user:password)") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read auth file {path}: {error}") from None
    credentials: list[Credentials] = []
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith(COMMENT_PREFIX):
            continue
        user, password = parse_credentials(line, source=f"auth file {path}, line {number}")
        if user in seen:
            raise ValueError(f"auth file {path}, line {number}: user {user!r} appears twice")
        seen.add(user)
        credentials.append((user, password))
    if not credentials:
        raise ValueError(f"auth file {path} holds no user:password line")
    return credentials


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach: ``localhost``, 127.0.0.0/8, ``::1``."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False
