"""OPC UA security against a simulated server that offers Sign and SignAndEncrypt with the three
current policies and requires a login: every policy works once the server is trusted; an
untrusted server is refused with the file to trust, and `shopfloor trust` trusts it; wrong
passwords, missing endpoints and the agent's own certificate are reported plainly."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from agent.cli import main
from agent.model import Quality
from agent.settings import OpcUaDevice
from drivers.base import NotConnected
from drivers.opcua.client import OpcUaDriver
from drivers.opcua.security import Pki, application_uri
from drivers.simulate.broker import free_port
from drivers.simulate.opcua import SimulatedOpcUaServer
from tests.conftest import REPO, write_config

PASSWORD = "pack-line-7"
SPEED = "/Objects/PackagingLine/Filler/Speed"


@pytest.fixture(scope="module")
def user_certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("user")
    certificate, key = folder / "user.der", folder / "user-key.pem"
    asyncio.run(
        setup_self_signed_certificate(
            key,
            certificate,
            "urn:shopfloor-agent:test:user",
            "localhost",
            [ExtendedKeyUsageOID.CLIENT_AUTH],
            {},
        )
    )
    return certificate, key


@pytest.fixture(scope="module")
def secure_server(
    tmp_path_factory: pytest.TempPathFactory, user_certificate: tuple[Path, Path]
) -> Iterator[SimulatedOpcUaServer]:
    server = SimulatedOpcUaServer(
        free_port(),
        security=True,
        pki_dir=tmp_path_factory.mktemp("server-pki"),
        users={"operator": PASSWORD},
        user_certificates=[user_certificate[0].read_bytes()],
    )
    with server:
        yield server


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "opcua-password"
    path.write_text(PASSWORD + "\n")
    return path


def device(server: SimulatedOpcUaServer, **settings: Any) -> OpcUaDevice:
    return OpcUaDevice.model_validate(
        {
            "name": "filler",
            "driver": "opcua",
            "endpoint": server.endpoint,
            "timeout": "3s",
            "points": [{"id": "speed", "node": SPEED}],
            **settings,
        }
    )


def read_speed(settings: OpcUaDevice, pki: Pki) -> Any:
    async def main() -> Any:
        driver = OpcUaDriver(settings, pki)
        try:
            await driver.connect()
            return (await driver.read(settings.points))[0]
        finally:
            await driver.close()

    return asyncio.run(main())


def agent_config(
    tmp_path: Path, server: SimulatedOpcUaServer, password_file: Path, security: dict[str, str]
) -> Path:
    """A configuration whose one device logs in to the secure server as operator."""
    return write_config(
        tmp_path,
        broker_port=1883,
        devices=[
            {
                "name": "filler",
                "driver": "opcua",
                "endpoint": server.endpoint,
                "security": security,
                "user": {"username": "operator", "password_file": str(password_file)},
                "points": [{"id": "speed", "node": SPEED}],
            }
        ],
    )


def trusting(server: SimulatedOpcUaServer, tmp_path: Path) -> Pki:
    pki = Pki(tmp_path / "pki")
    pki.trust(server.certificate.read_bytes())
    return pki


@pytest.mark.parametrize(
    ("mode", "policy"),
    [
        ("SignAndEncrypt", "Basic256Sha256"),
        ("SignAndEncrypt", "Aes128_Sha256_RsaOaep"),
        ("SignAndEncrypt", "Aes256_Sha256_RsaPss"),
        ("Sign", "Basic256Sha256"),
    ],
)
def test_each_policy_works_with_a_password_login(
    secure_server: SimulatedOpcUaServer, tmp_path: Path, password_file: Path, mode: str, policy: str
):
    settings = device(
        secure_server,
        security={"mode": mode, "policy": policy},
        user={"username": "operator", "password_file": str(password_file)},
    )
    sample = read_speed(settings, trusting(secure_server, tmp_path))
    assert (sample.value, sample.quality) == (120.0, Quality.GOOD)


def test_password_from_the_environment_and_a_wrong_one(
    secure_server: SimulatedOpcUaServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    pki = trusting(secure_server, tmp_path)
    settings = device(
        secure_server,
        security={"mode": "SignAndEncrypt"},
        user={"username": "operator", "password_env": "FILLER_PASSWORD"},
    )
    monkeypatch.delenv("FILLER_PASSWORD", raising=False)
    with pytest.raises(NotConnected, match="environment variable FILLER_PASSWORD"):
        read_speed(settings, pki)
    monkeypatch.setenv("FILLER_PASSWORD", PASSWORD)
    assert read_speed(settings, pki).value == 120.0
    monkeypatch.setenv("FILLER_PASSWORD", "guess")
    with pytest.raises(NotConnected) as refused:
        read_speed(settings, pki)
    assert "refused user 'operator' (BadUserAccessDenied)" in str(refused.value)
    assert "guess" not in str(refused.value)


def test_a_user_certificate_logs_in(
    secure_server: SimulatedOpcUaServer, tmp_path: Path, user_certificate: tuple[Path, Path]
):
    certificate, key = user_certificate
    settings = device(
        secure_server,
        security={"mode": "SignAndEncrypt", "policy": "Aes128_Sha256_RsaOaep"},
        user={"certificate": str(certificate), "private_key": str(key)},
    )
    assert read_speed(settings, trusting(secure_server, tmp_path)).value == 120.0


def test_the_agent_creates_its_certificate_once(
    secure_server: SimulatedOpcUaServer, tmp_path: Path, password_file: Path
):
    pki = trusting(secure_server, tmp_path)
    settings = device(
        secure_server,
        security={"mode": "SignAndEncrypt"},
        user={"username": "operator", "password_file": str(password_file)},
    )
    read_speed(settings, pki)
    created = pki.own_certificate.read_bytes()
    certificate = x509.load_der_x509_certificate(created)
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert application_uri() in names.get_values_for_type(x509.UniformResourceIdentifier)
    assert pki.own_key.stat().st_mode & 0o077 == 0, "the private key is readable by others"
    read_speed(settings, pki)
    assert pki.own_certificate.read_bytes() == created, "kept across sessions"


def test_an_untrusted_server_is_refused_until_trusted(
    secure_server: SimulatedOpcUaServer, tmp_path: Path, password_file: Path
):
    pki = Pki(tmp_path / "data" / "pki")
    config = agent_config(tmp_path, secure_server, password_file, {"mode": "SignAndEncrypt"})
    from agent.config import load_config

    settings = load_config(config)
    assert settings.agent.data_dir / "pki" == pki.root
    opcua = settings.devices[0]
    assert isinstance(opcua, OpcUaDevice)
    with pytest.raises(NotConnected) as refused:
        read_speed(opcua, pki)
    message = str(refused.value)
    rejected = sorted(pki.rejected.iterdir())
    assert len(rejected) == 1 and rejected[0].read_bytes() == secure_server.certificate.read_bytes()
    assert "is not trusted" in message and str(rejected[0]) in message
    assert "shopfloor trust CONFIG filler" in message and str(pki.trusted) in message

    # The engineer trusts the file the message names.
    assert main(["trust", str(config), "--certificate", str(rejected[0])]) == 0
    assert read_speed(opcua, pki).value == 120.0


def test_trust_fetches_shows_and_asks(
    secure_server: SimulatedOpcUaServer, tmp_path: Path, password_file: Path
):
    config = agent_config(
        tmp_path, secure_server, password_file, {"mode": "Sign", "policy": "Aes256_Sha256_RsaPss"}
    )

    def trust(*extra: str, answer: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "agent", "trust", str(config), *extra],
            input=answer,
            capture_output=True,
            text=True,
            cwd=REPO,
            env=os.environ,
            timeout=60,
            check=False,
        )

    without_terminal = trust("filler")
    assert without_terminal.returncode == 1
    assert "SHA-1 thumbprint" in without_terminal.stdout
    assert "--yes" in without_terminal.stderr
    accepted = trust("filler", "--yes")
    assert accepted.returncode == 0, accepted.stderr
    assert "Trusted: stored as" in accepted.stdout
    again = trust("--yes")  # every secured device: already trusted
    assert again.returncode == 0 and "Already trusted." in again.stdout
    unknown = trust("capper")
    assert unknown.returncode == 2
    assert "No OPC UA device named capper" in unknown.stderr and "filler" in unknown.stderr
    assert "Traceback" not in without_terminal.stderr + accepted.stderr + unknown.stderr


def test_a_missing_endpoint_lists_what_the_server_offers(tmp_path: Path):
    with SimulatedOpcUaServer(free_port()) as plain:
        settings = device(plain, security={"mode": "SignAndEncrypt"})
        with pytest.raises(NotConnected) as refused:
            read_speed(settings, Pki(tmp_path / "pki"))
    message = str(refused.value)
    assert "offers no endpoint with SignAndEncrypt and Basic256Sha256" in message
    assert "None with None" in message


def test_a_server_that_does_not_answer_is_a_connection_problem(tmp_path: Path):
    settings = OpcUaDevice.model_validate(
        {
            "name": "filler",
            "driver": "opcua",
            "endpoint": f"opc.tcp://127.0.0.1:{free_port()}",
            "timeout": "1s",
            "security": {"mode": "SignAndEncrypt"},
            "points": [{"id": "speed", "node": SPEED}],
        }
    )
    with pytest.raises(NotConnected, match="cannot open a session"):
        read_speed(settings, Pki(tmp_path / "pki"))


def test_browse_uses_a_configured_device_security_and_login(
    secure_server: SimulatedOpcUaServer,
    tmp_path: Path,
    password_file: Path,
    capsys: pytest.CaptureFixture[str],
):
    config = agent_config(
        tmp_path,
        secure_server,
        password_file,
        {"mode": "SignAndEncrypt", "policy": "Aes256_Sha256_RsaPss"},
    )
    browse = ["browse", "--config", str(config), "--device", "filler", "--depth", "3"]
    assert main(browse) == 1
    assert "is not trusted" in capsys.readouterr().err
    Pki(tmp_path / "data" / "pki").trust(secure_server.certificate.read_bytes())
    assert main(browse) == 0
    assert "Speed" in capsys.readouterr().out
    assert main(["browse", secure_server.endpoint]) == 1  # anonymous: the server wants a login
    capsys.readouterr()
    assert main(["browse", "--config", str(config)]) == 2
    assert "--config and --device go together" in capsys.readouterr().err


def test_own_certificate_files_and_their_problems(
    secure_server: SimulatedOpcUaServer, tmp_path: Path, password_file: Path
):
    """An application certificate from the plant's CA is used with its own application URI;
    a private key that needs a password is reported, not crashed on."""
    from cryptography.hazmat.primitives.serialization import (
        BestAvailableEncryption,
        Encoding,
        PrivateFormat,
        load_pem_private_key,
    )

    certificate, key = tmp_path / "plant.der", tmp_path / "plant-key.pem"
    asyncio.run(
        setup_self_signed_certificate(
            key,
            certificate,
            "urn:plant:gateway-7",
            "localhost",
            [ExtendedKeyUsageOID.CLIENT_AUTH],
            {},
        )
    )
    login = {"username": "operator", "password_file": str(password_file)}
    pki = trusting(secure_server, tmp_path)
    settings = device(
        secure_server,
        security={
            "mode": "SignAndEncrypt",
            "certificate": str(certificate),
            "private_key": str(key),
        },
        user=login,
    )
    assert read_speed(settings, pki).value == 120.0
    assert not pki.own_certificate.exists(), "no certificate of its own needed"

    locked = tmp_path / "locked-key.pem"
    private = load_pem_private_key(key.read_bytes(), password=None)
    locked.write_bytes(
        private.private_bytes(
            Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(b"key-password")
        )
    )
    settings = device(
        secure_server,
        security={
            "mode": "SignAndEncrypt",
            "certificate": str(certificate),
            "private_key": str(locked),
        },
        user=login,
    )
    with pytest.raises(NotConnected, match="cannot use the certificate"):
        read_speed(settings, pki)


def test_trust_refuses_a_certificate_and_devices_together(
    secure_server: SimulatedOpcUaServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    config = write_config(
        tmp_path,
        broker_port=1883,
        devices=[
            {
                "name": "filler",
                "driver": "opcua",
                "endpoint": secure_server.endpoint,
                "points": [{"id": "speed", "node": SPEED}],
            }
        ],
    )
    certificate = str(secure_server.certificate)
    assert main(["trust", str(config), "filler", "--certificate", certificate]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["trust", str(config), "--certificate", str(tmp_path / "missing.der")]) == 1
    assert "Cannot read the certificate" in capsys.readouterr().err
