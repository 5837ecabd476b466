"""The server's certificate and the trust store for client certificates.

Layout of the PKI folder (`[opcua] pki_dir`, default `opcua/` next to the site file)::

    own/cert.der          the server's self-signed application certificate
    own/private/key.pem   its RSA key (mode 0600)
    trusted/*.der|pem     client certificates (or CA certificates) that may connect
    rejected/<sha1>.der   client certificates that tried and were refused, kept so an
                          admin can trust them: `openprepay opcua cert trust SITE <sha1>`;
                          one file per certificate (its time = the last attempt), at most
                          `rejected_max_certificates` files and `rejected_max_bytes`
                          bytes, the oldest attempts pruned first
    users.json            users and password hashes (see users.py)

The certificate is generated on the first start and kept; it is renewed (same key) only when
it expired or the application URI changed, so clients that trusted it keep trusting it.
Client certificates are refused unless trusted: a thumbprint match, or issued by a trusted
CA certificate. A refusal is counted (security diagnostics) and logged at most once a
minute, so a client retrying with a self-signed certificate, or a scanner with a new one
per connection, fills neither the disk nor the log.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.crypto import cert_gen
from asyncua.crypto.truststore import TrustStore
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from openprepay.core.errors import OpenPrepayError

from .guard import SecurityCounters
from .loglimit import LogLimiter

log = logging.getLogger("openprepay.opcua")

CERT_DAYS = 5 * 365


class PkiError(OpenPrepayError):
    """A certificate cannot be found, read or trusted as asked."""


@dataclass(frozen=True, slots=True)
class Pki:
    root: Path

    @property
    def cert_file(self) -> Path:
        return self.root / "own" / "cert.der"

    @property
    def key_file(self) -> Path:
        return self.root / "own" / "private" / "key.pem"

    @property
    def trusted_dir(self) -> Path:
        return self.root / "trusted"

    @property
    def rejected_dir(self) -> Path:
        return self.root / "rejected"

    def create(self) -> None:
        for folder in (self.key_file.parent, self.trusted_dir, self.rejected_dir):
            folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.key_file.parent, 0o700)


def thumbprint(cert: x509.Certificate) -> str:
    """SHA-1 of the DER encoding, as OPC UA stacks and UaExpert show it."""
    return hashlib.sha1(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def ensure_server_certificate(pki: Pki, app_uri: str, hostname: str) -> x509.Certificate:
    """Load the server certificate, generating key and certificate on first start."""
    pki.create()
    if pki.key_file.exists():
        key = serialization.load_pem_private_key(pki.key_file.read_bytes(), password=None)
        assert isinstance(key, RSAPrivateKey)
    else:
        key = cert_gen.generate_private_key()
        fd = os.open(pki.key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(cert_gen.dump_private_key_as_pem(key))
        log.info("generated the OPC UA server key %s", pki.key_file)
    cert = None
    if pki.cert_file.exists():
        cert = x509.load_der_x509_certificate(pki.cert_file.read_bytes())
        reason = _renewal_reason(cert, key, app_uri)
        if reason:
            log.warning("renewing the OPC UA server certificate: %s", reason)
            cert = None
    if cert is None:
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(app_uri)]
        for dns in dict.fromkeys([hostname, socket.gethostname(), "localhost"]):
            names.append(x509.DNSName(dns))
        cert = cert_gen.generate_self_signed_app_certificate(
            key,
            app_uri,
            {"commonName": f"OpenPrepay@{hostname}", "organizationName": "OpenPrepay"},
            names,
            extended=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
            days=CERT_DAYS,
        )
        pki.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.DER))
        log.info("OPC UA server certificate %s (SHA-1 %s)", pki.cert_file, thumbprint(cert))
    return cert


def _renewal_reason(cert: x509.Certificate, key: RSAPrivateKey, app_uri: str) -> str | None:
    if cert.not_valid_after_utc < datetime.now(UTC) + timedelta(days=1):
        return "it expired"
    if cert.public_key().public_numbers() != key.public_key().public_numbers():
        return "it does not belong to the key"
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        if app_uri not in san.get_values_for_type(x509.UniformResourceIdentifier):
            return f"the application URI changed to {app_uri}"
    except x509.ExtensionNotFound:
        return "it has no subject alternative name"
    return None


def load_certificate_file(path: Path) -> x509.Certificate:
    data = path.read_bytes()
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise PkiError(f"{path}: not a certificate ({exc})") from None


@dataclass(frozen=True, slots=True)
class CertInfo:
    thumbprint: str
    subject: str
    application_uri: str
    not_before: datetime
    not_after: datetime
    path: Path

    @classmethod
    def of(cls, cert: x509.Certificate, path: Path) -> CertInfo:
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        except x509.ExtensionNotFound:
            uris = []
        return cls(
            thumbprint(cert),
            cert.subject.rfc4514_string(),
            uris[0] if uris else "",
            cert.not_valid_before_utc,
            cert.not_valid_after_utc,
            path,
        )


def list_certificates(folder: Path) -> list[CertInfo]:
    out = []
    if not folder.is_dir():
        return out
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in (".der", ".pem"):
            continue
        try:
            out.append(CertInfo.of(load_certificate_file(path), path))
        except (PkiError, OSError) as exc:
            log.warning("skipping %s: %s", path, exc)
    return out


def trust(pki: Pki, what: str) -> CertInfo:
    """Trust a rejected certificate (by thumbprint or a unique prefix of it) or a file."""
    pki.create()
    candidate = Path(what)
    if candidate.is_file():
        cert = load_certificate_file(candidate)
        source = candidate
    else:
        wanted = what.lower().replace(":", "")
        matches = [
            c for c in list_certificates(pki.rejected_dir) if c.thumbprint.startswith(wanted)
        ]
        if not matches:
            rejected = ", ".join(c.thumbprint[:12] for c in list_certificates(pki.rejected_dir))
            raise PkiError(
                f"no rejected certificate matches {what!r} and no such file "
                f"(rejected: {rejected or 'none'})"
            )
        if len(matches) > 1:
            raise PkiError(
                f"{what!r} matches {len(matches)} rejected certificates; give more digits"
            )
        source = matches[0].path
        cert = load_certificate_file(source)
    target = pki.trusted_dir / f"{thumbprint(cert)}.der"
    target.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    if source.parent == pki.rejected_dir:
        source.unlink(missing_ok=True)
        source.with_suffix(".json").unlink(missing_ok=True)
    return CertInfo.of(cert, target)


def untrust(pki: Pki, what: str) -> CertInfo:
    wanted = what.lower().replace(":", "")
    matches = [c for c in list_certificates(pki.trusted_dir) if c.thumbprint.startswith(wanted)]
    if len(matches) != 1:
        raise PkiError(f"{what!r} matches {len(matches)} trusted certificates")
    shutil.move(matches[0].path, pki.rejected_dir / matches[0].path.name)
    return matches[0]


class RejectedFolder:
    """rejected/, bounded: one DER file per thumbprint, whose modification time is the
    last attempt; beyond `max_count` files or `max_bytes` bytes the oldest are removed."""

    def __init__(self, folder: Path, *, max_count: int, max_bytes: int) -> None:
        self.folder = folder
        self.max_count = max_count
        self.max_bytes = max_bytes

    def keep(self, der: bytes, tp: str) -> tuple[int, int]:
        """Keep (or mark the new attempt of) a refused certificate; returns (files kept,
        files pruned). (-1, 0) when the folder was not scanned (a known certificate)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.folder / f"{tp}.der"
        target.with_suffix(".json").unlink(missing_ok=True)  # earlier versions' sidecar
        if target.exists():
            os.utime(target)
            return -1, 0
        if len(der) > self.max_bytes:
            return self.count(), 0
        target.write_bytes(der)
        return self._prune(target)

    def count(self) -> int:
        return len(self._entries())

    def _entries(self) -> list[tuple[int, str, Path, int]]:
        entries = []
        try:
            paths = list(self.folder.iterdir())
        except FileNotFoundError:
            return []
        for path in paths:
            if path.suffix.lower() not in (".der", ".pem"):
                continue
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            entries.append((st.st_mtime_ns, path.name, path, st.st_size))
        return entries

    def _prune(self, newest: Path) -> tuple[int, int]:
        # Oldest attempt first; the certificate just kept is never the one removed.
        entries = sorted(self._entries(), key=lambda e: (e[2] == newest, e[0], e[1]))
        count, total = len(entries), sum(e[3] for e in entries)
        pruned = 0
        for _mtime, _name, path, size in entries:
            if (count <= self.max_count and total <= self.max_bytes) or path == newest:
                break
            path.unlink(missing_ok=True)
            path.with_suffix(".json").unlink(missing_ok=True)
            count, total, pruned = count - 1, total - size, pruned + 1
        return count, pruned


class ClientCertificateValidator:
    """asyncua certificate validator: trusted certificates only, rejected ones kept.

    Called by asyncua at CreateSession with the client's certificate; raising ServiceError
    refuses the session with that status code.
    """

    def __init__(
        self,
        pki: Pki,
        rejected: RejectedFolder,
        counters: SecurityCounters,
        limiter: LogLimiter | None = None,
    ) -> None:
        self.pki = pki
        self.rejected = rejected
        self.counters = counters
        self.limiter = limiter or LogLimiter(log)
        self._stamp: tuple[float, int] | None = None
        self._trusted: set[str] = set()
        self._store: TrustStore | None = None
        counters.set("rejected_files", rejected.count())

    async def _reload(self) -> None:
        folder = self.pki.trusted_dir
        try:
            st = folder.stat()
            names = [p for p in folder.iterdir() if p.suffix.lower() in (".der", ".pem")]
        except FileNotFoundError:
            self._trusted, self._store, self._stamp = set(), None, None
            return
        stamp = (st.st_mtime, len(names))
        if stamp == self._stamp:
            return
        certs = list_certificates(folder)
        self._trusted = {c.thumbprint for c in certs}
        self._store = TrustStore([folder], []) if certs else None
        if self._store is not None:
            try:
                await self._store.load()
            except Exception as exc:  # a broken file must not open the door
                log.warning("trust store %s: %s", folder, exc)
                self._store = None
        self._stamp = stamp

    async def __call__(self, cert: x509.Certificate, app: ua.ApplicationDescription) -> None:
        now = datetime.now(UTC)
        if not (cert.not_valid_before_utc <= now <= cert.not_valid_after_utc):
            raise ServiceError(ua.StatusCodes.BadCertificateTimeInvalid)
        await self._reload()
        tp = thumbprint(cert)
        if tp in self._trusted:
            return
        if self._store is not None and self._issued_by_trusted_ca(cert):
            return
        self.counters.add("certificates_rejected")
        self._keep_rejected(cert, tp)
        self.limiter.warning(
            "certificate",
            "refused untrusted client certificate %s (%r); trust it with "
            "`openprepay opcua cert trust SITE %s`",
            tp,
            app.ApplicationUri,
            tp[:12],
        )
        raise ServiceError(ua.StatusCodes.BadCertificateUntrusted)

    def _issued_by_trusted_ca(self, cert: x509.Certificate) -> bool:
        if cert.issuer == cert.subject:
            return False  # self-signed: only an exact thumbprint match trusts it
        assert self._store is not None
        logging.getLogger("asyncuagds.validate").disabled = True
        try:
            return self._store.is_trusted(cert)
        except Exception:
            return False

    def _keep_rejected(self, cert: x509.Certificate, tp: str) -> None:
        try:
            kept, pruned = self.rejected.keep(cert.public_bytes(serialization.Encoding.DER), tp)
        except OSError as exc:
            self.limiter.warning(
                "rejected-folder", "cannot keep the rejected certificate %s: %s", tp, exc
            )
            return
        if kept >= 0:
            self.counters.set("rejected_files", kept)
        if pruned:
            self.counters.add("rejected_pruned", pruned)


def common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""
