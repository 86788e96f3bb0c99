"""OPC UA security: the agent's application certificate, its list of trusted servers, and the
secure channel and user login of a session.

The layout under `<data_dir>/pki/` follows what OPC UA stacks commonly use:

    own/cert.der            the agent's application certificate (created on first use)
    own/private/key.pem     its private key (mode 0600)
    trusted/                server certificates the agent trusts (DER or PEM, any file name)
    rejected/               server certificates the agent refused, to inspect and trust

A server is trusted when its exact certificate is in `trusted/`: PLCs mostly use self-signed
certificates, and comparing the certificate itself needs no chain or host-name rules that such
certificates often break.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import os
import re
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

from asyncua import ua
from asyncua.client.client import Client
from asyncua.crypto import security_policies
from asyncua.crypto.cert_gen import (
    dump_private_key_as_pem,
    generate_private_key,
    generate_self_signed_app_certificate,
)
from asyncua.ua.uaerrors import UaError
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.credentials import SecretUnavailable, read_secret
from agent.settings import OpcUaDevice
from drivers.base import DriverError

__all__ = [
    "Pki",
    "SecuritySetupError",
    "UntrustedServer",
    "application_uri",
    "certificate_summary",
    "prepare_client",
    "server_certificate",
]

log = logging.getLogger(__name__)

_POLICIES: dict[str, type[security_policies.SecurityPolicy]] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128_Sha256_RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
    "Aes256_Sha256_RsaPss": security_policies.SecurityPolicyAes256Sha256RsaPss,
}
_MODES = {
    "None": ua.MessageSecurityMode.None_,
    "Sign": ua.MessageSecurityMode.Sign,
    "SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt,
}


class SecuritySetupError(DriverError):
    """The secure channel or the login cannot be set up (a file, a password, a policy)."""


class UntrustedServer(SecuritySetupError):
    """The server's certificate is not in the trust list; `saved_as` holds a copy of it."""

    def __init__(self, message: str, saved_as: Path) -> None:
        super().__init__(message)
        self.saved_as = saved_as


def application_uri() -> str:
    """The agent's OPC UA application URI; its certificate carries the same one."""
    return f"urn:{socket.gethostname()}:shopfloor-agent"


@dataclass(frozen=True, slots=True)
class Pki:
    """Where the agent keeps its certificate and its trust list."""

    root: Path

    @property
    def own_certificate(self) -> Path:
        """The agent's application certificate (DER)."""
        return self.root / "own" / "cert.der"

    @property
    def own_key(self) -> Path:
        """The private key of the agent's application certificate (PEM)."""
        return self.root / "own" / "private" / "key.pem"

    @property
    def trusted(self) -> Path:
        """Server certificates the agent trusts."""
        return self.root / "trusted"

    @property
    def rejected(self) -> Path:
        """Server certificates the agent refused."""
        return self.root / "rejected"

    async def own_pair(self) -> tuple[Path, Path]:
        """The agent's certificate and key, created (self-signed, valid five years) when
        missing, expired, or made for another host name or application URI."""
        try:
            await asyncio.to_thread(self._ensure_own_pair)
        except (OSError, ValueError, TypeError) as exc:
            raise SecuritySetupError(
                f"cannot create the agent's certificate in {self.own_certificate.parent}: {exc}"
            ) from exc
        return self.own_certificate, self.own_key

    def _ensure_own_pair(self) -> None:
        # Devices connecting at once must not each make a pair: the engineer would trust one
        # on the PLC that another then replaces.
        with _OWN_PAIR_LOCK:
            uri, host = application_uri(), socket.gethostname()
            key = _private_key_or_none(self.own_key)
            certificate = _certificate_or_none(self.own_certificate)
            if key and certificate and _made_for(certificate, key, uri, host):
                return
            if key is None:
                key = generate_private_key()
                _write_private(self.own_key, dump_private_key_as_pem(key))
            certificate = generate_self_signed_app_certificate(
                key,
                uri,
                {"organizationName": "shopfloor-agent"},
                [x509.UniformResourceIdentifier(uri), x509.DNSName(host)],
                [ExtendedKeyUsageOID.CLIENT_AUTH],
                days=5 * 365,
            )
            der = certificate.public_bytes(Encoding.DER)
            _write_atomically(self.own_certificate, der, 0o644)
        # A user must act: servers that check their clients will refuse the new one.
        log.warning(
            "Created the agent's OPC UA application certificate %s (%s). Servers that check "
            "their clients must trust this file before the agent can open secure sessions.",
            self.own_certificate,
            certificate_summary(der),
        )

    def is_trusted(self, der: bytes) -> bool:
        """Whether this exact certificate is in the trust list."""
        if not self.trusted.is_dir():
            return False
        for path in sorted(self.trusted.iterdir()):
            if path.is_file() and _der_or_none(path) == der:
                return True
        return False

    def trust(self, der: bytes) -> Path:
        """Add a certificate to the trust list; returns the file it is stored in."""
        self.trusted.mkdir(parents=True, exist_ok=True)
        path = self.trusted / _file_name(der)
        path.write_bytes(der)
        return path

    def reject(self, der: bytes) -> Path:
        """Keep a copy of a refused certificate, for the engineer to inspect and trust."""
        self.rejected.mkdir(parents=True, exist_ok=True)
        path = self.rejected / _file_name(der)
        path.write_bytes(der)
        return path


_OWN_PAIR_LOCK = threading.Lock()
_WARNED_PLAIN: set[str] = set()  # devices warned about a password on an unsecured channel


def _made_for(certificate: x509.Certificate, key: rsa.RSAPrivateKey, uri: str, host: str) -> bool:
    """Whether the certificate is still valid, matches the key and names this application."""
    now = dt.datetime.now(dt.UTC)
    if not certificate.not_valid_before_utc <= now < certificate.not_valid_after_utc:
        return False
    public = certificate.public_key()
    if not isinstance(public, rsa.RSAPublicKey):
        return False
    if public.public_numbers() != key.public_key().public_numbers():
        return False
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return uri in names.get_values_for_type(
        x509.UniformResourceIdentifier
    ) and host in names.get_values_for_type(x509.DNSName)


def _private_key_or_none(path: Path) -> rsa.RSAPrivateKey | None:
    data = _read_or_none(path)
    if data is None:
        return None
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        return None
    return key if isinstance(key, rsa.RSAPrivateKey) else None


def _certificate_or_none(path: Path) -> x509.Certificate | None:
    der = _der_or_none(path)
    if der is None:
        return None
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError:
        return None


def _write_private(path: Path, data: bytes) -> None:
    """Write a private key readable by this user only, from the first byte on."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    _write_atomically(path, data, 0o600)


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(descriptor, data)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    os.chmod(temporary, mode)
    os.replace(temporary, path)


def certificate_summary(der: bytes) -> str:
    """Subject, validity and SHA-1 thumbprint (what OPC UA tools and PLC web pages show)."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return "not a readable X.509 certificate"
    common = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = str(common[0].value) if common else cert.subject.rfc4514_string()
    until = cert.not_valid_after_utc.date().isoformat()
    return f"{name}, valid until {until}, SHA-1 thumbprint {thumbprint(der)}"


def thumbprint(der: bytes) -> str:
    """The SHA-1 thumbprint as colon-separated hex pairs."""
    digest = hashlib.sha1(der, usedforsecurity=False).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


async def server_certificate(device: OpcUaDevice) -> tuple[bytes, str]:
    """The certificate the server offers for the device's security mode and policy, and the
    server's application name. Asks the server's endpoints over an unsecured channel, as every
    OPC UA client must before it can open a secure one."""
    client = Client(device.endpoint, timeout=device.timeout)
    endpoint = await _endpoint_for(client, device)
    return _first_certificate(endpoint.ServerCertificate), _server_name(endpoint)


async def prepare_client(client: Client, device: OpcUaDevice, pki: Pki) -> None:
    """Set the client's application identity, secure channel and user login from the
    device's settings, before `client.connect()`. Raises `UntrustedServer` for a server the
    trust list does not hold and `SecuritySetupError` for anything else the user must fix."""
    client.application_uri = application_uri()
    client.name = client.description = "shopfloor-agent"
    plain_login = device.user is not None and device.user.username is not None
    if plain_login and device.security.mode == "None" and device.name not in _WARNED_PLAIN:
        _WARNED_PLAIN.add(device.name)
        log.warning(
            "Device %s logs in as %s over an unsecured channel: the password can be read or "
            "replayed on the network. Use security.mode SignAndEncrypt where the server offers it.",
            device.name,
            device.user.username if device.user else "",
        )
    await _set_user(client, device)
    if device.security.mode == "None":
        return
    endpoint = await _endpoint_for(client, device)
    der = _first_certificate(endpoint.ServerCertificate)
    if not pki.is_trusted(der):
        saved = pki.reject(der)
        raise UntrustedServer(
            f"the server certificate of {device.endpoint} ({certificate_summary(der)}) is not "
            f"trusted. It was saved as {saved}. If it is the certificate of "
            f"{_server_name(endpoint)}, trust it with `shopfloor trust CONFIG {device.name}` or "
            f"copy that file into {pki.trusted}/",
            saved,
        )
    _check_time(der, device.endpoint)
    if device.security.certificate is not None and device.security.private_key is not None:
        certificate, key = device.security.certificate, device.security.private_key
        # A certificate issued elsewhere names its own application URI; the session must say
        # the same, or the server refuses it (BadCertificateUriInvalid).
        client.application_uri = _application_uri_of(certificate) or client.application_uri
    else:
        certificate, key = await pki.own_pair()
    try:
        await client.set_security(
            _POLICIES[device.security.policy],
            str(certificate),
            str(key),
            server_certificate=der,
            mode=_MODES[device.security.mode],
        )
    except (OSError, ValueError, TypeError, UaError) as exc:
        raise SecuritySetupError(
            f"cannot use the certificate {certificate} and key {key}: {_describe(exc)}"
        ) from exc


async def _endpoint_for(client: Client, device: OpcUaDevice) -> ua.EndpointDescription:
    try:
        endpoints = await asyncio.wait_for(
            client.connect_and_get_server_endpoints(), device.timeout * 2
        )
    except (OSError, TimeoutError, UaError) as exc:
        # Not a security problem: the server is not there (the device task retries).
        raise ConnectionError(f"cannot ask {device.endpoint} for its endpoints: {exc}") from exc
    mode, policy = _MODES[device.security.mode], _POLICIES[device.security.policy].URI
    for endpoint in endpoints:
        if endpoint.SecurityMode == mode and endpoint.SecurityPolicyUri == policy:
            return endpoint
    offered = sorted(
        {
            f"{_mode_name(e.SecurityMode)} with {_policy_name(e.SecurityPolicyUri)}"
            for e in endpoints
        }
    )
    raise SecuritySetupError(
        f"{device.endpoint} offers no endpoint with {device.security.mode} and "
        f"{device.security.policy}; it offers: {'; '.join(offered) or 'nothing'}"
    )


async def _set_user(client: Client, device: OpcUaDevice) -> None:
    user = device.user
    if user is None:
        return
    if user.username is not None:
        client.set_user(user.username)
        client.set_password(_password(device))
        return
    if user.certificate is not None and user.private_key is not None:
        try:
            await client.load_client_certificate(str(user.certificate))
            await client.load_private_key(user.private_key)
        except (OSError, ValueError, TypeError) as exc:
            raise SecuritySetupError(
                f"cannot load the user certificate {user.certificate} or its key "
                f"{user.private_key}: {_describe(exc)}"
            ) from exc


def _password(device: OpcUaDevice) -> str:
    """The login password from its file or environment variable; never logged."""
    user = device.user
    assert user is not None
    try:
        secret = read_secret(
            user.password_file,
            user.password_env,
            file_label="OPC UA password file",
            env_label=f"user.password_env of device {device.name}",
        )
    except SecretUnavailable as exc:
        raise SecuritySetupError(str(exc)) from exc
    return secret or ""


def _check_time(der: bytes, endpoint: str) -> None:
    cert = x509.load_der_x509_certificate(der)
    now = dt.datetime.now(dt.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise SecuritySetupError(
            f"the server certificate of {endpoint} is trusted but not valid now (valid from "
            f"{cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d}); "
            "renew it on the server, or check the gateway's clock"
        )


def _first_certificate(chain: bytes | None) -> bytes:
    """The server's own certificate: the first DER item of a possible chain."""
    # A DER SEQUENCE: 0x30, then the length in short or long form.
    if not chain or len(chain) < 4 or chain[0] != 0x30:
        raise SecuritySetupError("the server offers a secure endpoint without a certificate")
    if chain[1] & 0x80:
        count = chain[1] & 0x7F
        length = 2 + count + int.from_bytes(chain[2 : 2 + count], "big")
    else:
        length = 2 + chain[1]
    if length > len(chain):
        raise SecuritySetupError("the server's certificate is cut short")
    return bytes(chain[:length])


def _application_uri_of(path: Path) -> str | None:
    der = _der_or_none(path)
    try:
        certificate = x509.load_der_x509_certificate(der or b"")
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return None
    uris = names.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


def _server_name(endpoint: ua.EndpointDescription) -> str:
    server = endpoint.Server
    name = server.ApplicationName.Text if server and server.ApplicationName else None
    return f"'{name}'" if name else "the server"


def _mode_name(mode: ua.MessageSecurityMode) -> str:
    return "None" if mode == ua.MessageSecurityMode.None_ else str(mode.name)


def _policy_name(uri: str) -> str:
    return uri.rpartition("#")[2] or uri


def _file_name(der: bytes) -> str:
    try:
        common = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(
            NameOID.COMMON_NAME
        )
        name = str(common[0].value) if common else "server"
    except ValueError:
        name = "server"
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")[:60] or "server"
    digest = hashlib.sha1(der, usedforsecurity=False).hexdigest()[:16]
    return f"{safe}-{digest}.der"


def _der_or_none(path: Path) -> bytes | None:
    data = _read_or_none(path)
    if data is None:
        return None
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            return x509.load_pem_x509_certificate(data).public_bytes(Encoding.DER)
        except ValueError:
            return None
    return data


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
