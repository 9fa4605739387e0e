"""Events: what a watched camera decided about one tracked face, and everything that acts on it.

Data flows one way: a camera's tracks (``facegate.cameras``) become :class:`Event` objects, handed to an
:class:`EventSink` that stores them (the gallery's database), streams them (SSE), and delivers them
(webhooks, MQTT). Recognition never waits on any of those.
"""

from .model import Event, EventSink

__all__ = ["Event", "EventSink"]
