"""OPC UA users: names, roles and scrypt-hashed passwords in a JSON file.

The file (`users.json` in the PKI folder unless `[opcua] users_file` says otherwise) is
written by `openprepay opcua users add|remove` and read by the running server, which
notices changes without a restart. Passwords are stored as scrypt hashes with a per-user
salt; nothing in the file lets anyone log in.

asyncua asks for the user synchronously, on the event loop, at every session activation,
so `UserDirectory.verify` keeps it cheap: a successful verification is remembered as an
HMAC of the password under a key that lives only in this process, so the next login with
the same password costs a hash, not a KDF. Repeated failures are throttled by the source
they come from, before the directory is asked (logins.py), never by user name: a guesser
cannot lock a real user out.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from openprepay.core.errors import OpenPrepayError


class Role(enum.StrEnum):
    """What a user may do; each role includes the rights of `viewer`."""

    #: Browse, read, subscribe to values and events, read history.
    VIEWER = "viewer"
    #: + supply operations: Disconnect, Reconnect, Protect.
    OPERATOR = "operator"
    #: + money: TopUp, Refund.
    CASHIER = "cashier"
    #: Everything: all of the above plus SetTariff and SetAlarmThresholds.
    ADMIN = "admin"


NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@\-]{0,63}$")
MIN_PASSWORD = 8
#: scrypt cost: about 16 MiB and a few tens of milliseconds per verification.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


class UserError(OpenPrepayError):
    """A user cannot be added or removed as asked."""


@dataclass(frozen=True, slots=True)
class UserRecord:
    name: str
    role: Role
    salt: str
    hash: str
    n: int = SCRYPT_N
    r: int = SCRYPT_R
    p: int = SCRYPT_P
    created: str = ""


_DUMMY_SALT = secrets.token_bytes(16)


def hash_password(
    password: str, salt: bytes, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P
) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=128 * r * n * 2, dklen=32
    )


def make_record(name: str, password: str, role: Role | str) -> UserRecord:
    if not NAME_PATTERN.match(name):
        raise UserError(
            f"user name: expected letters, digits, '_', '.', '@', '-' (at most 64); got {name!r}"
        )
    try:
        role = Role(role)
    except ValueError:
        raise UserError(
            f"role: expected one of {', '.join(r.value for r in Role)}; got {role!r}"
        ) from None
    if len(password) < MIN_PASSWORD:
        raise UserError(f"password: at least {MIN_PASSWORD} characters")
    salt = secrets.token_bytes(16)
    return UserRecord(
        name=name,
        role=role,
        salt=salt.hex(),
        hash=hash_password(password, salt).hex(),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def load_users(path: Path) -> dict[str, UserRecord]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    try:
        doc = json.loads(text)
        users = {}
        for item in doc.get("users", []):
            item = dict(item)
            item["role"] = Role(item["role"])
            record = UserRecord(**item)
            users[record.name] = record
        return users
    except (ValueError, TypeError, KeyError) as exc:
        raise UserError(f"{path}: not a valid users file: {exc}") from None


def save_users(path: Path, users: dict[str, UserRecord]) -> None:
    """Write atomically, readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "format": "openprepay.opcua.users/1",
        "kdf": "scrypt",
        "users": [
            {**asdict(u), "role": u.role.value}
            for u in sorted(users.values(), key=lambda u: u.name)
        ],
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def add_user(
    path: Path, name: str, password: str, role: Role | str, *, replace: bool = False
) -> UserRecord:
    users = load_users(path)
    if name in users and not replace:
        raise UserError(f"user {name!r} already exists (use --replace to change it)")
    record = make_record(name, password, role)
    users[name] = record
    save_users(path, users)
    return record


def remove_user(path: Path, name: str) -> None:
    users = load_users(path)
    if name not in users:
        known = ", ".join(sorted(users)) or "none"
        raise UserError(f"no user {name!r} (users: {known})")
    del users[name]
    save_users(path, users)


class UserDirectory:
    """The users file as the server sees it: reloaded when it changes, verified fast."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._users: dict[str, UserRecord] = {}
        self._stamp: tuple[int, int] | None = None
        self._key = secrets.token_bytes(32)
        #: name -> (HMAC of the password that verified, the record it verified against)
        self._verified: dict[str, tuple[bytes, UserRecord]] = {}
        self._lock = threading.Lock()
        self.reload()

    def reload(self) -> None:
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp and self._stamp is not None:
            return
        users = load_users(self.path) if stamp is not None else {}
        with self._lock:
            self._users = users
            self._stamp = stamp

    @property
    def users(self) -> dict[str, UserRecord]:
        self.reload()
        return dict(self._users)

    def verify(self, name: str, password: str) -> Role | None:
        """The user's role when `password` is right, else None."""
        try:
            self.reload()
        except UserError:
            pass  # a broken file keeps the users last read
        record = self._users.get(name)
        if record is None:
            # Spend what a real check costs, so the answer's timing does not tell whether
            # the name exists.
            hash_password(password, _DUMMY_SALT)
            return None
        mac = hmac.new(self._key, password.encode("utf-8"), hashlib.sha256).digest()
        cached = self._verified.get(name)
        if cached is not None and cached[1] is record and hmac.compare_digest(cached[0], mac):
            return record.role
        digest = hash_password(password, bytes.fromhex(record.salt), record.n, record.r, record.p)
        if not hmac.compare_digest(digest, bytes.fromhex(record.hash)):
            return None
        with self._lock:
            self._verified[name] = (mac, record)
        return record.role
