"""The event hub wired from the settings: store beside the gallery, access rules, webhooks, MQTT."""

from __future__ import annotations

import logging

from facegate.config import Settings
from facegate.gallery.backends import events_for
from .access import AccessRules
from .hub import EventHub
from .webhooks import WebhookDispatcher

log = logging.getLogger(__name__)


def build_hub(settings: Settings, gallery) -> EventHub:
    """The ``EventSink`` of a server (built in the app's lifespan; ``close()`` at shutdown)."""
    store = events_for(gallery, settings.encryption_key)
    webhooks = WebhookDispatcher(
        store,
        timeout_s=settings.webhook_timeout_s,
        attempts=settings.webhook_attempts,
        backoff_s=settings.webhook_backoff_s,
        queue=settings.webhook_queue,
    )
    outlets: list = [webhooks]
    if settings.mqtt_url:
        from .mqtt import MqttPublisher

        cameras = [c.name for c in getattr(settings, "cameras", None) or []]
        outlets.append(
            MqttPublisher(
                settings.mqtt_url,
                prefix=settings.mqtt_topic_prefix,
                discovery_prefix=settings.mqtt_discovery_prefix,
                ca_file=settings.mqtt_ca_file,
                cameras=cameras,
            )
        )
    hub = EventHub(
        store,
        rules=AccessRules.from_settings(settings.access),
        outlets=outlets,
        queue_max=settings.events_queue,
        keep_days=settings.events_keep_days,
        keep_max=settings.events_keep_max,
        prune_interval_s=settings.events_prune_interval_s,
    )
    hub.webhooks = webhooks
    hub.keepalive_s = settings.events_keepalive_s
    return hub
