"""Events on MQTT through a real Debian mosquitto (user and password required) and a real `facegate
serve`, read with paho: the event topic, the retained camera state, Home Assistant discovery, the
server's online status and its Last Will when it is killed."""

from __future__ import annotations

import getpass
import json
import queue
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from conftest import b64, free_port

MOSQUITTO = Path("/usr/sbin/mosquitto")


@pytest.fixture
def broker(tmp_path):
    if not MOSQUITTO.exists() or not shutil.which("mosquitto_passwd"):
        pytest.skip("Debian's mosquitto is not installed (apt-get install mosquitto; .ci/run does)")
    d = tmp_path / "mqtt"
    d.mkdir()
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(d / "passwd"), "gate", "s3cret-pw"], check=True, capture_output=True)
    port = free_port()
    (d / "mosquitto.conf").write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {d / 'passwd'}\npersistence false\n"
        f"user {getpass.getuser()}\nlog_dest stdout\n"
    )
    b = Broker(d, port)
    yield b
    b.stop()


class Broker:
    """mosquitto on ``port`` with the config in ``d``; restartable on the same port."""

    def __init__(self, d: Path, port: int) -> None:
        self.d, self.port = d, port
        self.start()

    def start(self) -> None:
        self.log = open(self.d / "broker.log", "ab")
        self.proc = subprocess.Popen([str(MOSQUITTO), "-c", str(self.d / "mosquitto.conf")], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            probe = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
            probe.username_pw_set("gate", "s3cret-pw")
            try:
                probe.connect("127.0.0.1", self.port)
                probe.disconnect()
                return
            except OSError:
                time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


class Subscriber:
    def __init__(self, port: int, user: str = "gate", password: str = "s3cret-pw", topics=("facegate/#", "homeassistant/#")) -> None:
        self.msgs: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self.refused = queue.Queue()
        self.seen: list[tuple[str, bytes, bool]] = []
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        c.username_pw_set(user, password)

        def on_connect(client, userdata, flags, rc, props):
            self.refused.put(rc.is_failure)
            if not rc.is_failure:
                for t in topics:
                    client.subscribe(t, qos=1)

        c.on_connect = on_connect
        c.on_message = lambda client, userdata, m: self.msgs.put((m.topic, m.payload, bool(m.retain)))
        c.connect("127.0.0.1", port)
        c.loop_start()
        self.client = c

    def wait(self, topic: str, pred=lambda payload: True, timeout: float = 30) -> tuple[bytes, bool]:
        """The first message on ``topic`` matching ``pred``, received so far or within ``timeout``."""
        deadline = time.monotonic() + timeout
        i = 0
        while True:
            while i < len(self.seen):
                t, p, retained = self.seen[i]
                i += 1
                if t == topic and pred(p):
                    return p, retained
            self.seen.append(self.msgs.get(timeout=max(0.01, deadline - time.monotonic())))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_events_state_discovery_and_last_will(broker, start_server, other_face):
    bad = Subscriber(broker.port, password="wrong")
    assert bad.refused.get(timeout=10) is True  # the broker wants the password
    bad.close()
    sub = Subscriber(broker.port)
    assert sub.refused.get(timeout=10) is False
    s = start_server(None, env={"FACEGATE_MQTT_URL": f"mqtt://gate:s3cret-pw@127.0.0.1:{broker.port}"})
    try:
        assert sub.wait("facegate/status", lambda p: p == b"online")
        with s.client() as c:
            pid = c.post("/v1/people", json={"name": "Mia Mqtt", "images": [b64(other_face)]}).json()["id"]
            ev = c.post("/v1/events/test", json={"camera": "door", "status": "recognized", "person_id": pid}).json()
        payload, _ = sub.wait("facegate/door/event")
        got = json.loads(payload)
        assert (got["id"], got["name"], got["person_id"], got["status"]) == (ev["id"], "Mia Mqtt", pid, "recognized")
        assert got["crop_url"] == f"/v1/events/{ev['id']}/crop"
        config, _ = sub.wait("homeassistant/sensor/facegate_door/config")
        cfg = json.loads(config)
        assert cfg["state_topic"] == "facegate/door/state" and cfg["availability_topic"] == "facegate/status"
        assert cfg["unique_id"] == "facegate_door" and "value_json.last_name" in cfg["value_template"]
        state, _ = sub.wait("facegate/door/state")
        assert json.loads(state)["last_name"] == "Mia Mqtt" and json.loads(state)["state"] == "online"
        sub.close()

        # a newcomer (Home Assistant starting later) gets the retained state, discovery and status at once
        late = Subscriber(broker.port)
        state, retained = late.wait("facegate/door/state")
        assert retained and json.loads(state)["last_event_id"] == ev["id"]
        assert late.wait("homeassistant/sensor/facegate_door/config")[1] is True
        assert late.wait("facegate/status")[0] == b"online"
        # the server dies without a goodbye: the broker publishes its Last Will
        s.proc.send_signal(signal.SIGKILL)
        s.proc.wait(10)
        payload, _ = late.wait("facegate/status", lambda p: p == b"offline")
        assert payload == b"offline"
        late.close()
    finally:
        s.kill()


def test_a_clean_stop_says_offline_and_an_absent_broker_does_not_hold_up_events(broker, start_server, tmp_path):
    dead = free_port()  # nothing listens here
    s = start_server(None, env={"FACEGATE_MQTT_URL": f"mqtt://gate:s3cret-pw@127.0.0.1:{dead}"})
    with s.client() as c:
        ev = c.post("/v1/events/test", json={"camera": "door"}).json()
        for _ in range(100):
            if c.get(f"/v1/events/{ev['id']}").status_code == 200:
                break
            time.sleep(0.05)
        assert c.get(f"/v1/events/{ev['id']}").status_code == 200  # stored, although MQTT is unreachable
    s.stop()
    s2 = start_server(None, env={"FACEGATE_MQTT_URL": f"mqtt://gate:s3cret-pw@127.0.0.1:{broker.port}"})
    sub = Subscriber(broker.port, topics=("facegate/status",))
    try:
        assert sub.wait("facegate/status", lambda p: p == b"online")
        s2.stop()
        assert sub.wait("facegate/status", lambda p: p == b"offline")[0] == b"offline"
    finally:
        sub.close()


def _tls_files(d: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it (PEM files)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "FaceGate test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256())
    )
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = d / "ca.pem", d / "server.pem", d / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return paths


def test_mqtts_with_a_ca_file(tmp_path, start_server):
    if not MOSQUITTO.exists():
        pytest.skip("Debian's mosquitto is not installed (apt-get install mosquitto; .ci/run does)")
    d = tmp_path / "tls"
    d.mkdir()
    ca, cert, key = _tls_files(d)
    port = free_port()
    (d / "mosquitto.conf").write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
        f"persistence false\nuser {getpass.getuser()}\n"
    )
    proc = subprocess.Popen([str(MOSQUITTO), "-c", str(d / "mosquitto.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        sub.tls_set(ca_certs=str(ca))
        got: queue.Queue = queue.Queue()
        sub.on_connect = lambda c, u, f, rc, p: c.subscribe("facegate/#", qos=1)
        sub.on_message = lambda c, u, m: got.put((m.topic, m.payload))
        for _ in range(50):
            try:
                sub.connect("127.0.0.1", port)
                break
            except OSError:
                time.sleep(0.1)
        sub.loop_start()
        s = start_server(None, env={"FACEGATE_MQTT_URL": f"mqtts://127.0.0.1:{port}", "FACEGATE_MQTT_CA_FILE": str(ca)})
        with s.client() as c:
            ev = c.post("/v1/events/test", json={"camera": "tls"}).json()
        deadline = time.monotonic() + 30
        while True:
            topic, payload = got.get(timeout=max(0.01, deadline - time.monotonic()))
            if topic == "facegate/tls/event":
                assert json.loads(payload)["id"] == ev["id"]
                break
        sub.disconnect()
        sub.loop_stop()
    finally:
        proc.terminate()
        proc.wait(10)


def test_reconnects_after_the_broker_restarts(broker, start_server):
    s = start_server(None, env={"FACEGATE_MQTT_URL": f"mqtt://gate:s3cret-pw@127.0.0.1:{broker.port}"})
    with s.client() as c:
        first = Subscriber(broker.port)
        c.post("/v1/events/test", json={"camera": "door"})
        assert first.wait("facegate/door/state")
        first.close()
        broker.stop()  # persistence off: the broker forgets every retained message
        ev = c.post("/v1/events/test", json={"camera": "door"}).json()  # while the broker is away
        broker.start()
        sub = Subscriber(broker.port)
        try:
            # back by itself: status, discovery and the camera's state are retained again, and the event
            # published while the broker was away arrives
            assert sub.wait("facegate/status", lambda p: p == b"online", timeout=60)
            assert sub.wait("homeassistant/sensor/facegate_door/config", timeout=30)
            assert json.loads(sub.wait("facegate/door/event", lambda p: json.loads(p)["id"] == ev["id"], timeout=30)[0])["id"] == ev["id"]
            assert json.loads(sub.wait("facegate/door/state", timeout=30)[0])["last_event_id"] == ev["id"]
        finally:
            sub.close()


def test_a_cameras_retained_state_follows_its_stream(broker, tmp_path):
    """A file camera: its retained state says online while the stream plays and offline once it has
    ended (the watcher passes its stream's state to MQTT). Needs Debian's ffmpeg for the video."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cameras"))
    from camkit import FFMPEG, make_video
    from conftest import ServerProcess

    if not Path(FFMPEG).is_file():
        pytest.skip(f"{FFMPEG} not found: apt-get install ffmpeg (.ci/run does)")
    video = make_video(tmp_path / "empty.mp4", [(None, 3.0)])  # an empty grey scene for 3 s
    sub = Subscriber(broker.port, topics=("facegate/hall/state",))
    env = {"FACEGATE_MQTT_URL": f"mqtt://gate:s3cret-pw@127.0.0.1:{broker.port}"}
    server = ServerProcess(tmp_path / "data", "--camera", f"hall={video}", env=env).start()
    try:
        online, _ = sub.wait("facegate/hall/state", lambda p: json.loads(p)["state"] == "online", timeout=60)
        offline, retained = sub.wait("facegate/hall/state", lambda p: json.loads(p)["state"] == "offline", timeout=60)
        assert json.loads(offline)["last_name"] is None  # nobody was seen
    finally:
        server.stop()
        sub.close()
