"""`shopfloor trust`: add an OPC UA server's certificate to the agent's trust list.

The certificate is either fetched from the server (shown with its thumbprint, to compare with
the one the PLC's own display or web page shows, and confirmed) or given as a file copied from
the server, which needs no trust in the network at all.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from agent.settings import Config, OpcUaDevice
from drivers.opcua.security import Pki, SecuritySetupError, certificate_summary, server_certificate

__all__ = ["trust_command"]


def trust_command(
    config: Config, device_names: Sequence[str], *, certificate: Path | None, yes: bool
) -> int:
    """Trust the given certificate file, or the certificates of the named OPC UA devices (all
    secured ones when none is named). Returns the exit status."""
    pki = Pki(config.agent.data_dir / "pki")
    try:
        return _trust(config, device_names, pki, certificate=certificate, yes=yes)
    except OSError as exc:  # the trust list belongs to the agent's user, for one
        print(f"Cannot update the trust list in {pki.trusted}: {exc}", file=sys.stderr)
        return 1


def _trust(
    config: Config,
    device_names: Sequence[str],
    pki: Pki,
    *,
    certificate: Path | None,
    yes: bool,
) -> int:
    if certificate is not None and device_names:
        print("Give --certificate or device names, not both.", file=sys.stderr)
        return 2
    if certificate is not None:
        try:
            der = _der(certificate.read_bytes())
        except (OSError, ValueError) as exc:
            print(f"Cannot read the certificate {certificate}: {exc}", file=sys.stderr)
            return 1
        print(f"{certificate}: {certificate_summary(der)}")
        if pki.is_trusted(der):
            print("It is already trusted.")
            return 0
        print(f"Trusted: stored as {pki.trust(der)}.")
        return 0
    devices = _devices(config, device_names)
    if devices is None:
        return 2
    status = 0
    for device in devices:
        status = max(status, _trust_device(device, pki, yes))
    return status


def _devices(config: Config, names: Sequence[str]) -> list[OpcUaDevice] | None:
    opcua = {d.name: d for d in config.devices if isinstance(d, OpcUaDevice)}
    unknown = [name for name in names if name not in opcua]
    if unknown:
        known = ", ".join(opcua) or "none"
        print(
            f"No OPC UA device named {', '.join(unknown)} in the configuration "
            f"(OPC UA devices: {known}).",
            file=sys.stderr,
        )
        return None
    if names:
        return [opcua[name] for name in names]
    secured = [d for d in opcua.values() if d.security.mode != "None"]
    if not secured:
        print(
            "No OPC UA device in the configuration uses security (security.mode Sign or "
            "SignAndEncrypt): there is nothing to trust. Name a device to trust it anyway.",
            file=sys.stderr,
        )
        return None
    return secured


def _trust_device(device: OpcUaDevice, pki: Pki, yes: bool) -> int:
    if device.security.mode == "None":
        # Ask for the certificate of a secure endpoint all the same.
        device = device.model_copy(
            update={"security": device.security.model_copy(update={"mode": "SignAndEncrypt"})}
        )
    try:
        der, server_name = asyncio.run(server_certificate(device))
    except (ConnectionError, OSError, SecuritySetupError) as exc:
        print(f"{device.name}: {exc}", file=sys.stderr)
        return 1
    print(f"{device.name} ({device.endpoint}) is {server_name}:")
    print(f"  {certificate_summary(der)}")
    if pki.is_trusted(der):
        print("  Already trusted.")
        return 0
    if not yes:
        if not sys.stdin.isatty():
            print(
                "  Not trusted. Compare the thumbprint with the one the server shows, then run "
                "again with --yes (no terminal to ask on).",
                file=sys.stderr,
            )
            return 1
        answer = input("  Compare the thumbprint with the one the server shows. Trust it? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("  Not trusted.")
            return 1
    print(f"  Trusted: stored as {pki.trust(der)}. The agent uses it at its next connect.")
    return 0


def _der(data: bytes) -> bytes:
    """A certificate file's DER bytes (the file may be DER or PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data).public_bytes(Encoding.DER)
    return x509.load_der_x509_certificate(data).public_bytes(Encoding.DER)
