"""A real SMTP server on 127.0.0.1 (aiosmtpd) with STARTTLS and AUTH, for testing ``smtplib`` clients.

The certificate is self-signed (made with ``cryptography`` for 127.0.0.1/localhost);
``client_ssl_context()`` trusts exactly it. STARTTLS is required before MAIL, and AUTH
(LOGIN/PLAIN) only works after STARTTLS and only for the one configured user. Received mail is
parsed with ``email`` (policy.default) into ``messages``. ``stop()`` takes the server down
(connection refused); ``start()`` brings it back on the same port.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import threading
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def make_self_signed_cert(folder: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """Write cert.pem and key.pem for ``host`` (and localhost) into ``folder``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "scanner-agent test SMTP")])
    now = dt.datetime.now(dt.UTC)
    pub = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(pub)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(host)), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(pub), critical=False)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Collector:
    """aiosmtpd handler: keep every message that arrives."""

    def __init__(self, sink: SmtpServer) -> None:
        self.sink = sink

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8")
        msg = message_from_bytes(raw, policy=policy.default)
        with self.sink.lock:
            self.sink.raw.append(raw)
            self.sink.messages.append(msg)  # type: ignore[arg-type]
            self.sink.envelopes.append((envelope.mail_from or "", list(envelope.rcpt_tos)))
        return "250 Message accepted for delivery"


class SmtpServer:
    """``with SmtpServer(tmp_path, user="agent", password="s3cret") as smtp:`` then send to smtp.port."""

    def __init__(
        self,
        folder: Path,
        *,
        user: str = "agent",
        password: str = "correct horse battery",
        auth_required: bool = True,
    ) -> None:
        self.host = "127.0.0.1"
        self.port = _free_port()
        self.user = user
        self.password = password
        self.auth_required = auth_required
        self.cert_path, self.key_path = make_self_signed_cert(folder)
        self.messages: list[EmailMessage] = []
        self.raw: list[bytes] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.logins: list[tuple[str, bool]] = []  # (user, accepted): never the password
        self.lock = threading.Lock()
        self._controller: Controller | None = None

    def client_ssl_context(self) -> ssl.SSLContext:
        """A client context that verifies the server against this test certificate only."""
        return ssl.create_default_context(cafile=str(self.cert_path))

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == self.user
            and auth_data.password.decode() == self.password
        )
        with self.lock:
            self.logins.append(
                (auth_data.login.decode() if isinstance(auth_data, LoginPassword) else "?", ok)
            )
        # handled=False: let aiosmtpd answer the failure with the standard 535 itself.
        return AuthResult(success=ok, handled=ok, auth_data=auth_data if ok else None)

    def start(self) -> SmtpServer:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(str(self.cert_path), str(self.key_path))
        self._controller = Controller(
            _Collector(self),
            hostname=self.host,
            port=self.port,
            server_hostname="localhost",
            tls_context=tls,
            require_starttls=True,
            authenticator=self._authenticate,
            auth_required=self.auth_required,
            auth_require_tls=True,
            ready_timeout=10,
        )
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> SmtpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
