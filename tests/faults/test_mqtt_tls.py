"""MQTT over TLS against a real Mosquitto with certificates made for the test: mutual TLS and a
password over TLS deliver; every kind of TLS failure is logged once, as one ERROR sentence that
names the cause and the setting or file to fix, while the agent keeps retrying."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.app import StartupError, mqtt_tls_context
from agent.config import load_config
from agent.settings import Config
from drivers.simulate.broker import LocalBroker, TlsListener, write_password_file
from tests.conftest import modbus_device, write_config
from tests.faults.certs import Authority

POINT = [{"id": "x", "address": "holding:0", "type": "uint16"}]


@pytest.fixture
def tls_broker() -> Iterator[Callable[..., LocalBroker]]:
    """Factory: a broker with a TLS listener (`tls_port`) and a plain one (`port`)."""
    with contextlib.ExitStack() as running:

        def make(listener: TlsListener) -> LocalBroker:
            return running.enter_context(LocalBroker(tls=listener, log_connections=True))

        yield make


@pytest.fixture
def ca(tmp_path: Path) -> Authority:
    return Authority(tmp_path / "certs")


def agent_config(tmp_path: Path, broker: LocalBroker, modbus_port: int, **mqtt: Any) -> Path:
    assert broker.tls_port is not None
    return write_config(
        tmp_path,
        broker_port=broker.tls_port,
        devices=[modbus_device("plc", modbus_port, POINT)],
        mqtt=mqtt,
    )


def error_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if " ERROR " in line]


def tls_connections(broker: LocalBroker) -> int:
    """Connection attempts on the TLS port (Mosquitto logs a handshake that fails while it
    accepts the connection as a failed client connection, without the port)."""
    log = broker.log()
    accepted = re.findall(rf"New connection from \S+ on port {broker.tls_port}\b", log)
    return len(accepted) + len(re.findall(r"Client connection from \S+ failed", log))


def test_mutual_tls_with_an_encrypted_key_delivers_samples(
    tls_broker, ca, modbus, subscriber_factory, agent_factory, tmp_path
):
    server = ca.issue("broker", dns=("localhost",), ips=("127.0.0.1",))
    client = ca.issue("gw-test", client=True, key_password="key-secret")
    (tmp_path / "certs" / "key.password").write_text("key-secret\n")
    broker = tls_broker(TlsListener(server.cert, server.key, ca.cert, require_certificate=True))
    subscriber = subscriber_factory(broker.port, topic="test/gw-test/#")
    subscriber.wait_for(subscriber.connected, what="the subscriber")
    # Relative paths: resolved against the configuration file's directory, as password_file.
    config = agent_config(
        tmp_path,
        broker,
        modbus.port,
        tls={
            "ca_file": "certs/test-ca.pem",
            "cert_file": "certs/gw-test.pem",
            "key_file": "certs/gw-test.key",
            "key_password_file": "certs/key.password",
        },
    )
    agent = agent_factory(config)
    agent.start()
    subscriber.wait_for(
        lambda: len(subscriber.samples_of("x")) >= 5, timeout=20, what="samples over mutual TLS"
    )
    assert subscriber.statuses()[-1]["state"] == "online"
    assert agent.stop() == 0
    assert client.key.read_text().startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert error_lines(agent.log()) == []


def test_password_from_a_file_over_tls_with_server_name(
    tls_broker, ca, modbus, subscriber_factory, agent_factory, tmp_path
):
    # The broker's certificate names broker.test only; the agent reaches it by IP address and
    # checks the certificate against mqtt.tls.server_name.
    server = ca.issue("broker", dns=("broker.test",))
    passwords = write_password_file(tmp_path / "mosquitto.passwd", {"gw-test": "mqtt-secret"})
    broker = tls_broker(TlsListener(server.cert, server.key, ca.cert, password_file=passwords))
    (tmp_path / "mqtt.password").write_text("mqtt-secret\n")
    subscriber = subscriber_factory(broker.port, topic="test/gw-test/#")
    subscriber.wait_for(subscriber.connected, what="the subscriber")
    config = agent_config(
        tmp_path,
        broker,
        modbus.port,
        username="gw-test",
        password_file="mqtt.password",
        tls={"ca_file": "certs/test-ca.pem", "server_name": "broker.test"},
    )
    agent = agent_factory(config)
    agent.start()
    subscriber.wait_for(
        lambda: len(subscriber.samples_of("x")) >= 5, timeout=20, what="samples over TLS"
    )
    assert agent.stop() == 0
    log = agent.log()
    assert error_lines(log) == []
    assert "mqtt-secret" not in log


# (case, what the one ERROR line must say): the broker's certificate, the name it is checked
# against, the client certificate, and the password are each wrong in one case.
FAILURES = {
    "wrong_ca": "is not signed by a CA in {dir}/certs/other-ca.pem (mqtt.tls.ca_file)",
    "name_mismatch": "is not valid for the name 127.0.0.1",
    "client_certificate_missing": "requires a client certificate (mutual TLS)",
    "client_certificate_refused": "refused the client certificate {dir}/certs/gw-test.pem",
    "wrong_password": "refused the connection: Not authorized",
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_a_tls_failure_is_logged_once_with_its_cause_and_retried(
    case, tls_broker, ca, modbus, subscriber_factory, agent_factory, tmp_path
):
    other = Authority(tmp_path / "certs", "other-ca")
    dns = ("broker.test",) if case == "name_mismatch" else ("localhost",)
    ips = () if case == "name_mismatch" else ("127.0.0.1",)
    server = ca.issue("broker", dns=dns, ips=ips)
    passwords = write_password_file(tmp_path / "mosquitto.passwd", {"gw-test": "right"})
    broker = tls_broker(
        TlsListener(
            server.cert,
            server.key,
            ca.cert,
            require_certificate=case.startswith("client_certificate"),
            password_file=passwords if case == "wrong_password" else None,
        )
    )
    tls: dict[str, Any] = {"ca_file": "certs/test-ca.pem"}
    mqtt: dict[str, Any] = {"tls": tls}
    if case == "wrong_ca":
        tls["ca_file"] = "certs/other-ca.pem"
    elif case == "client_certificate_refused":
        wrong = other.issue("gw-test", client=True)  # signed by a CA the broker does not know
        tls.update(cert_file=str(wrong.cert), key_file=str(wrong.key))
    elif case == "wrong_password":
        (tmp_path / "mqtt.password").write_text("wrong\n")
        mqtt.update(username="gw-test", password_file="mqtt.password")
    subscriber = subscriber_factory(broker.port, topic="test/gw-test/metrics/#")
    subscriber.wait_for(subscriber.connected, what="the subscriber")
    agent = agent_factory(agent_config(tmp_path, broker, modbus.port, **mqtt))
    agent.start()
    expected = FAILURES[case].format(dir=tmp_path)
    subscriber.wait_for(
        lambda: any(expected in line for line in error_lines(agent.log())),
        timeout=20,
        what=f"the ERROR line saying {expected!r}",
    )
    seen = tls_connections(broker)
    # Retried (reconnect_min = reconnect_max = 1 s in these configs), but said only once.
    subscriber.wait_for(
        lambda: tls_connections(broker) >= seen + 3, timeout=10, what="three more attempts"
    )
    assert agent.process is not None and agent.process.poll() is None, "it keeps retrying"
    errors = error_lines(agent.log())
    assert len(errors) == 1, errors
    assert expected in errors[0]
    assert subscriber.metrics() == []
    assert agent.stop() == 0


def test_an_unusable_tls_file_stops_the_start_with_one_clear_line(
    ca, modbus, agent_factory, tmp_path
):
    (tmp_path / "certs" / "ca.pem").write_text("not a certificate\n")
    config = write_config(
        tmp_path,
        broker_port=8883,
        devices=[modbus_device("plc", modbus.port, POINT)],
        mqtt={"tls": {"ca_file": "certs/ca.pem"}},
    )
    agent = agent_factory(config)
    agent.start()
    assert agent.process is not None
    assert agent.process.wait(20) == 1
    log = agent.log()
    assert "Traceback" not in log
    assert (
        f"The agent cannot start: the CA file {tmp_path}/certs/ca.pem (mqtt.tls.ca_file) holds "
        "no PEM certificate" in log
    )


def tls_config(tmp_path: Path, tls: dict[str, Any], **mqtt: Any) -> Config:
    path = tmp_path / "agent.yaml"
    document = {
        "agent": {"id": "gw-test", "data_dir": "data"},
        "mqtt": {"host": "127.0.0.1", "tls": tls, **mqtt},
        "devices": [modbus_device("plc", 502, POINT)],
    }
    path.write_text(json.dumps(document))
    return load_config(path)


def test_client_key_problems_are_found_before_connecting(ca, tmp_path, monkeypatch):
    plain = ca.issue("gw-plain", client=True)
    locked = ca.issue("gw-locked", client=True, key_password="right")
    (tmp_path / "certs" / "wrong.password").write_text("wrong")
    cases = {
        "is encrypted: give its password with mqtt.tls.key_password_file": {
            "cert_file": str(locked.cert),
            "key_file": str(locked.key),
        },
        "cannot be decrypted with the given password": {
            "cert_file": str(locked.cert),
            "key_file": str(locked.key),
            "key_password_file": "certs/wrong.password",
        },
        f"does not belong to the client certificate {plain.cert}": {
            "cert_file": str(plain.cert),
            "key_file": str(locked.key),
            "key_password_env": "SHOPFLOOR_TEST_KEY_PASSWORD",
        },
        f"{plain.cert} (mqtt.tls.cert_file) holds no PEM private key; give the key with": {
            "cert_file": str(plain.cert)
        },
    }
    monkeypatch.setenv("SHOPFLOOR_TEST_KEY_PASSWORD", "right")
    for message, tls in cases.items():
        with pytest.raises(StartupError, match=re.escape(message)):
            mqtt_tls_context(tls_config(tmp_path, {"ca_file": str(ca.cert), **tls}))
    good = {"cert_file": str(locked.cert), "key_file": str(locked.key)}
    context = mqtt_tls_context(
        tls_config(tmp_path, {**good, "key_password_env": "SHOPFLOOR_TEST_KEY_PASSWORD"})
    )
    assert context is not None
    assert context.minimum_version.name == "TLSv1_2"
    assert context.check_hostname


def test_tls_settings_resolve_relative_paths_default_the_port_and_rebuild(ca, tmp_path):
    config = tls_config(
        tmp_path,
        {"ca_file": "certs/test-ca.pem", "min_version": 1.3, "server_name": "broker.test"},
    )
    assert config.mqtt.port == 8883, "TLS without a port: the MQTT-over-TLS port"
    assert config.mqtt.tls is not None
    assert config.mqtt.tls.ca_file == ca.cert
    assert config.mqtt.tls.min_version == "1.3"
    rebuilt = Config.from_validated(json.loads(config.model_dump_json(exclude_defaults=True)))
    assert rebuilt == config
    assert rebuilt.mqtt.tls is not None and isinstance(rebuilt.mqtt.tls.ca_file, Path)
    assert tls_config(tmp_path, {}, port=1884).mqtt.port == 1884
    assert tls_config(tmp_path, {}).mqtt.tls is not None, "tls: {} uses the system's CAs"
    plain = write_config(tmp_path, broker_port=1883, devices=[modbus_device("plc", 502, POINT)])
    assert load_config(plain).mqtt.tls is None
