"""TLS to the broker: the context, built once at startup from the files in `mqtt.tls` (read and
checked before any network I/O), and plain sentences for what goes wrong in a handshake.

The broker's certificate chain and its host name are always verified, with TLS 1.2 at least.
"""

from __future__ import annotations

import re
import socket
import ssl
from pathlib import Path
from typing import Any

from agent.settings import MqttTls

__all__ = ["TlsSetupError", "describe_tls_failure", "tls_context"]

# OpenSSL's X509_V_ERR_* codes met when a broker's certificate is checked.
_NOT_YET_VALID = 9
_EXPIRED = 10
_UNTRUSTED = (2, 18, 19, 20, 21, 24)  # no issuer found, self-signed, not a CA
_NAME_MISMATCH = (62, 64)  # host name, IP address
# TLS alerts by which a broker refuses the client certificate (or its absence).
_CERT_MISSING_ALERTS = ("TLSV13_ALERT_CERTIFICATE_REQUIRED",)
_CERT_REFUSED_ALERTS = (
    "TLSV1_ALERT_UNKNOWN_CA",
    "SSLV3_ALERT_BAD_CERTIFICATE",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED",
    "SSLV3_ALERT_CERTIFICATE_REVOKED",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
    "TLSV1_ALERT_ACCESS_DENIED",
)
_VERSION_ALERTS = ("TLSV1_ALERT_PROTOCOL_VERSION", "UNSUPPORTED_PROTOCOL", "NO_PROTOCOLS_AVAILABLE")
_REASON = re.compile(r"\[SSL: ([A-Z0-9_]+)\]")


class TlsSetupError(Exception):
    """A file of `mqtt.tls` cannot be used; the message names it and says why."""


class _CheckedNameContext(ssl.SSLContext):
    """A client context that checks the broker's certificate against `server_name` (and sends
    it as SNI) instead of the host paho connects to."""

    server_name: str | None = None

    def wrap_socket(self, sock: socket.socket, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        if self.server_name is not None:
            kwargs["server_hostname"] = self.server_name
        return super().wrap_socket(sock, *args, **kwargs)


def tls_context(settings: MqttTls, key_password: str | None = None) -> ssl.SSLContext:
    """The client context for `settings`; raises `TlsSetupError` when a file is missing,
    unreadable, not PEM, or the key does not fit the certificate (or needs a password)."""
    context = _CheckedNameContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies chain and host name
    context.minimum_version = (
        ssl.TLSVersion.TLSv1_3 if settings.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    )
    context.server_name = settings.server_name
    if settings.ca_file is None:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        text = _read(settings.ca_file, "the CA file", "mqtt.tls.ca_file")
        if "-----BEGIN CERTIFICATE-----" not in text:
            raise TlsSetupError(
                f"the CA file {settings.ca_file} (mqtt.tls.ca_file) holds no PEM certificate "
                "(-----BEGIN CERTIFICATE-----)"
            )
        try:
            context.load_verify_locations(cadata=text)
        except (ssl.SSLError, ValueError) as exc:
            raise TlsSetupError(
                f"the CA file {settings.ca_file} (mqtt.tls.ca_file) cannot be used: {exc}"
            ) from exc
    if settings.cert_file is not None:
        _load_client_certificate(context, settings, key_password)
    return context


def _load_client_certificate(
    context: ssl.SSLContext, settings: MqttTls, key_password: str | None
) -> None:
    assert settings.cert_file is not None
    cert_text = _read(settings.cert_file, "the client certificate", "mqtt.tls.cert_file")
    if "-----BEGIN CERTIFICATE-----" not in cert_text:
        raise TlsSetupError(
            f"the client certificate {settings.cert_file} (mqtt.tls.cert_file) holds no PEM "
            "certificate (-----BEGIN CERTIFICATE-----)"
        )
    if settings.key_file is not None:
        key_text = _read(settings.key_file, "the client key", "mqtt.tls.key_file")
        key_file, key_setting = settings.key_file, "mqtt.tls.key_file"
    else:
        key_text = cert_text
        key_file, key_setting = settings.cert_file, "mqtt.tls.cert_file"
    if "PRIVATE KEY-----" not in key_text:
        hint = "" if settings.key_file is not None else "; give the key with mqtt.tls.key_file"
        raise TlsSetupError(f"{key_file} ({key_setting}) holds no PEM private key{hint}")
    encrypted = "ENCRYPTED" in key_text
    if encrypted and key_password is None:
        raise TlsSetupError(
            f"the private key {key_file} ({key_setting}) is encrypted: give its password with "
            "mqtt.tls.key_password_file or mqtt.tls.key_password_env"
        )
    try:
        # A password callable, even for a plain key: OpenSSL must never prompt on a terminal.
        context.load_cert_chain(
            settings.cert_file, settings.key_file, password=lambda: key_password or ""
        )
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or str(exc)
        if "KEY_VALUES_MISMATCH" in str(reason):
            message = (
                f"the private key {key_file} ({key_setting}) does not belong to the client "
                f"certificate {settings.cert_file}"
            )
        elif encrypted:
            message = (
                f"the private key {key_file} ({key_setting}) cannot be decrypted with the given "
                f"password ({reason})"
            )
        else:
            message = (
                f"the client certificate {settings.cert_file} and key {key_file} cannot be "
                f"used: {exc}"
            )
        raise TlsSetupError(message) from exc


def _read(path: Path, what: str, setting: str) -> str:
    try:
        return path.read_text(encoding="ascii", errors="replace")
    except OSError as exc:
        raise TlsSetupError(f"cannot read {what} {path} ({setting}): {exc.strerror}") from exc


def describe_tls_failure(
    failure: BaseException | str, settings: MqttTls, *, endpoint: str, name: str
) -> tuple[str, str] | None:
    """(kind, sentence) for a failed TLS handshake, or None if `failure` is no TLS error.

    `failure` is the exception of a connection attempt, or the text of the error paho met on
    the socket afterwards (with TLS 1.3 a broker refuses a client certificate only after the
    handshake, on the first read). `name` is the name the broker's certificate must carry;
    the kind stays the same while the cause does (the failure is logged once per kind).
    """
    if isinstance(failure, ssl.SSLCertVerificationError):
        return _verification_failure(failure, settings, endpoint=endpoint, name=name)
    text = str(failure)
    if isinstance(failure, BaseException) and not isinstance(failure, ssl.SSLError):
        return None
    match = _REASON.search(text)
    reason = match.group(1) if match else ""
    if not reason and not isinstance(failure, ssl.SSLError):
        return None
    if reason in _CERT_MISSING_ALERTS or (
        reason == "SSLV3_ALERT_HANDSHAKE_FAILURE" and settings.cert_file is None
    ):
        if settings.cert_file is None:
            return "tls-client-certificate-missing", (
                f"The MQTT broker {endpoint} requires a client certificate (mutual TLS): give "
                f"the agent's certificate and key with mqtt.tls.cert_file and mqtt.tls.key_file "
                f"({reason})."
            )
        return "tls-client-certificate-refused", (
            f"The MQTT broker {endpoint} did not accept the client certificate "
            f"{settings.cert_file} (mqtt.tls.cert_file) ({reason})."
        )
    if reason in _CERT_REFUSED_ALERTS:
        return "tls-client-certificate-refused", (
            f"The MQTT broker {endpoint} refused the client certificate {settings.cert_file} "
            f"(mqtt.tls.cert_file): {reason}. Have it signed by a CA the broker trusts (its "
            "cafile), and check that it has not expired or been revoked."
        )
    if reason in _VERSION_ALERTS:
        return "tls-version", (
            f"The MQTT broker {endpoint} and the agent have no TLS version in common: the agent "
            f"needs TLS {settings.min_version} or newer (mqtt.tls.min_version) ({reason})."
        )
    if reason in ("WRONG_VERSION_NUMBER", "UNEXPECTED_EOF_WHILE_READING") or (
        "EOF occurred" in text
    ):
        return "tls-not-spoken", (
            f"The MQTT broker {endpoint} ended the TLS handshake ({reason or text}): check that "
            "this port serves MQTT over TLS (usually 8883; 1883 is plain MQTT)."
        )
    return f"tls-{reason or 'other'}", f"TLS with the MQTT broker {endpoint} failed: {text}."


def _verification_failure(
    exc: ssl.SSLCertVerificationError, settings: MqttTls, *, endpoint: str, name: str
) -> tuple[str, str]:
    code, detail = exc.verify_code, exc.verify_message
    if code in _NAME_MISMATCH:
        fix = (
            "set mqtt.tls.server_name to a name it lists"
            if settings.server_name is None
            else "correct mqtt.tls.server_name"
        )
        return "tls-name", (
            f"The certificate of the MQTT broker {endpoint} is not valid for the name {name} "
            f"({detail}): connect with a name the certificate lists (mqtt.host), or {fix}."
        )
    if code in _UNTRUSTED:
        if settings.ca_file is None:
            where = "no CA this system trusts signed it: set mqtt.tls.ca_file to the CA"
            return "tls-untrusted", (
                f"The certificate of the MQTT broker {endpoint} is not trusted ({detail}): "
                f"{where} certificate that signed the broker's certificate."
            )
        return "tls-untrusted", (
            f"The certificate of the MQTT broker {endpoint} is not signed by a CA in "
            f"{settings.ca_file} (mqtt.tls.ca_file) ({detail}): put the CA certificate that "
            "signed the broker's certificate in that file."
        )
    if code in (_EXPIRED, _NOT_YET_VALID):
        state = "has expired" if code == _EXPIRED else "is not valid yet"
        return "tls-validity", (
            f"The certificate of the MQTT broker {endpoint} {state} ({detail}); if it should "
            "be valid, check this gateway's clock (NTP)."
        )
    return "tls-verification", (
        f"The certificate of the MQTT broker {endpoint} failed verification: {detail} "
        f"(OpenSSL code {code})."
    )
