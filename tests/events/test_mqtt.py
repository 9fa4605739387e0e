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
    log = open(d / "broker.log", "wb")
    proc = subprocess.Popen([str(MOSQUITTO), "-c", str(d / "mosquitto.conf")], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        probe = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        probe.username_pw_set("gate", "s3cret-pw")
        try:
            probe.connect("127.0.0.1", port)
            probe.disconnect()
            break
        except OSError:
            time.sleep(0.1)
    yield port
    proc.terminate()
    proc.wait(10)
    log.close()


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
    bad = Subscriber(broker, password="wrong")
    assert bad.refused.get(timeout=10) is True  # the broker wants the password
    bad.close()
    sub = Subscriber(broker)
    assert sub.refused.get(timeout=10) is False
    s = start_server(None, env={"FACEGATE_MQTT_URL": f"mqtt://gate:s3cret-pw@127.0.0.1:{broker}"})
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
        late = Subscriber(broker)
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
    s2 = start_server(None, env={"FACEGATE_MQTT_URL": f"mqtt://gate:s3cret-pw@127.0.0.1:{broker}"})
    sub = Subscriber(broker, topics=("facegate/status",))
    try:
        assert sub.wait("facegate/status", lambda p: p == b"online")
        s2.stop()
        assert sub.wait("facegate/status", lambda p: p == b"offline")[0] == b"offline"
    finally:
        sub.close()
