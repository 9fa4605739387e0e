"""Events on MQTT (paho-mqtt), with Home Assistant discovery.

Topics (``<p>`` is ``mqtt_topic_prefix``, default ``facegate``):

- ``<p>/<camera>/event``: each event's JSON (QoS 1, not retained);
- ``<p>/<camera>/state``: retained JSON ``{"state": "online"|"offline", "last_name", "last_status",
  "last_decision", "last_event_id", "at"}``: what a Home Assistant sensor shows;
- ``<p>/status``: retained ``online``, and ``offline`` as the Last Will (the broker says it when the
  server goes without a goodbye) and at a clean stop;
- ``<discovery>/sensor/facegate_<camera>/config``: retained Home Assistant discovery, one sensor per
  camera holding the last name seen.

paho's own network thread connects, reconnects with backoff and sends; ``deliver`` only queues, so a
broker that is slow or away never holds up the writer or recognition (messages wait in a bounded queue).
"""

from __future__ import annotations

import json
import logging
import re
import ssl
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt

from .hub import event_json
from .model import Event

log = logging.getLogger(__name__)

#: Messages kept while the broker is away; beyond, the oldest are lost.
MAX_QUEUED = 1000


def _slug(camera: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", camera)


class MqttPublisher:
    """The hub's outlet for MQTT."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "facegate",
        discovery_prefix: str | None = "homeassistant",
        ca_file: Path | None = None,
        cameras: list[str] | None = None,
        client_id: str | None = None,
    ) -> None:
        u = urlsplit(url)
        self.prefix = prefix.rstrip("/")
        self.discovery_prefix = discovery_prefix.rstrip("/") if discovery_prefix else None
        self.status_topic = f"{self.prefix}/status"
        self._known: dict[str, dict] = {}  # camera -> its last state (re-sent at each connect)
        self._lock = threading.Lock()
        self.connected = threading.Event()
        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"facegate-{int(time.time() * 1000) % 10**9}", clean_session=True
        )
        if u.username:
            c.username_pw_set(unquote(u.username), unquote(u.password) if u.password else None)
        if u.scheme == "mqtts":
            c.tls_set(ca_certs=str(ca_file) if ca_file else None, cert_reqs=ssl.CERT_REQUIRED)
        c.will_set(self.status_topic, "offline", qos=1, retain=True)
        c.max_queued_messages_set(MAX_QUEUED)
        c.reconnect_delay_set(1, 30)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        self._client = c
        for cam in cameras or []:
            self._known[cam] = {"state": "online", "last_name": None, "last_status": None, "last_decision": None, "last_event_id": None, "at": None}
        c.connect_async(u.hostname, u.port or (8883 if u.scheme == "mqtts" else 1883), keepalive=30)
        c.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("the MQTT broker refused the connection: %s", reason_code)
            return
        log.info("connected to the MQTT broker")
        client.publish(self.status_topic, "online", qos=1, retain=True)
        with self._lock:
            known = dict(self._known)
        for cam, state in known.items():
            self._announce(cam)
            client.publish(self._topic(cam, "state"), json.dumps(state), qos=1, retain=True)
        self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        if reason_code != 0:
            log.warning("lost the MQTT broker (%s); reconnecting", reason_code)

    def _topic(self, camera: str, leaf: str) -> str:
        return f"{self.prefix}/{camera}/{leaf}"

    def _announce(self, camera: str) -> None:
        """Home Assistant discovery: a sensor per camera whose state is the last name seen."""
        if not self.discovery_prefix:
            return
        slug = _slug(camera)
        state = self._topic(camera, "state")
        config = {
            "name": f"FaceGate {camera}",
            "unique_id": f"facegate_{slug}",
            "object_id": f"facegate_{slug}",
            "state_topic": state,
            "value_template": "{{ value_json.last_name if value_json.last_name else value_json.last_status or 'none' }}",
            "json_attributes_topic": state,
            "availability_topic": self.status_topic,
            "icon": "mdi:face-recognition",
            "device": {"identifiers": [f"facegate_{slug}"], "name": f"FaceGate {camera}", "manufacturer": "FaceGate"},
        }
        self._client.publish(f"{self.discovery_prefix}/sensor/facegate_{slug}/config", json.dumps(config), qos=1, retain=True)

    def deliver(self, event: Event, seq: int, has_crop: bool) -> None:
        cam = event.camera
        state = {
            "state": "online",
            "last_name": event.name if event.status == "recognized" else None,
            "last_status": event.status,
            "last_decision": event.decision,
            "last_event_id": event.id,
            "at": event.decided_at,
        }
        with self._lock:
            new = cam not in self._known
            self._known[cam] = state
        if new:
            self._announce(cam)
        self._client.publish(self._topic(cam, "event"), json.dumps(event_json(event, seq, has_crop)), qos=1)
        self._client.publish(self._topic(cam, "state"), json.dumps(state), qos=1, retain=True)

    def camera_state(self, camera: str, online: bool) -> None:
        """A camera came up or went away (its watcher says so): the retained state follows."""
        with self._lock:
            state = dict(self._known.get(camera) or {"last_name": None, "last_status": None, "last_decision": None, "last_event_id": None, "at": None})
            state["state"] = "online" if online else "offline"
            new = camera not in self._known
            self._known[camera] = state
        if new:
            self._announce(camera)
        self._client.publish(self._topic(camera, "state"), json.dumps(state), qos=1, retain=True)

    def close(self) -> None:
        if self.connected.is_set():
            info = self._client.publish(self.status_topic, "offline", qos=1, retain=True)
            try:
                info.wait_for_publish(2.0)
            except Exception:
                pass
        self._client.disconnect()
        self._client.loop_stop()
