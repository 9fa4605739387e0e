"""Access rules for a door: per camera, who may pass and when; an event's ``decision`` comes from here.

A rule lists people by name (compared case-insensitively) or by person id, and optionally weekly
time windows in the server's local time zone ("mon-fri 07:00-19:00", "sat,sun 10:00-12:30",
"daily 06:00-22:00"). A recognized person on the list, inside a window (or with no windows), is
``granted``; everyone and everything else (unknown, spoof, not listed, outside the hours) is ``denied``.
Cameras without a rule get no decision (None).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .model import Event

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WINDOW = re.compile(r"^\s*([a-z,\-]+)\s+(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


@dataclass(frozen=True)
class Window:
    days: frozenset[int]  # 0 = Monday
    start_min: int
    end_min: int  # exclusive; up to 24:00

    def contains(self, weekday: int, minute: int) -> bool:
        return weekday in self.days and self.start_min <= minute < self.end_min


def _days(spec: str) -> set[int]:
    if spec in ("daily", "all"):
        return set(range(7))
    out: set[int] = set()
    for part in spec.split(","):
        if "-" in part:
            a, b = part.split("-", 1)
            if a not in DAYS or b not in DAYS:
                raise ValueError(f"unknown day in {part!r} (use {', '.join(DAYS)})")
            i, j = DAYS.index(a), DAYS.index(b)
            out.update(range(i, j + 1) if i <= j else [*range(i, 7), *range(0, j + 1)])
        elif part in DAYS:
            out.add(DAYS.index(part))
        else:
            raise ValueError(f"unknown day {part!r} (use {', '.join(DAYS)}, or daily)")
    return out


def parse_window(text: str) -> Window:
    """``"mon-fri 07:00-19:00"`` -> a ``Window``; a clear ``ValueError`` for anything else."""
    m = _WINDOW.match(text.lower())
    if not m:
        raise ValueError(f"not a time window: {text!r} (e.g. 'mon-fri 07:00-19:00', 'daily 06:00-22:00')")
    days = _days(m.group(1))
    h1, m1, h2, m2 = (int(g) for g in m.groups()[1:])
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if m1 > 59 or m2 > 59 or start >= 24 * 60 or end > 24 * 60 or end <= start:
        raise ValueError(f"not a time window: {text!r} (hours 00:00-24:00, the end after the start)")
    return Window(frozenset(days), start, end)


@dataclass(frozen=True)
class Rule:
    names: frozenset[str]
    ids: frozenset[int]
    windows: tuple[Window, ...]

    @classmethod
    def build(cls, allow: Iterable[str | int], windows: Iterable[str] = ()) -> Rule:
        names = frozenset(a.strip().casefold() for a in allow if isinstance(a, str))
        ids = frozenset(int(a) for a in allow if isinstance(a, int) and not isinstance(a, bool))
        return cls(names, ids, tuple(parse_window(w) for w in windows))

    def decide(self, event: Event, at: float) -> str:
        if event.status != "recognized" or event.person_id is None:
            return "denied"
        listed = event.person_id in self.ids or (event.name is not None and event.name.strip().casefold() in self.names)
        if not listed:
            return "denied"
        if not self.windows:
            return "granted"
        t = time.localtime(at)
        minute = t.tm_hour * 60 + t.tm_min
        return "granted" if any(w.contains(t.tm_wday, minute) for w in self.windows) else "denied"


class AccessRules:
    """The rules of every camera that has one (``settings.access``)."""

    def __init__(self, rules: Mapping[str, Rule]) -> None:
        self.rules = dict(rules)

    @classmethod
    def from_settings(cls, access: Mapping[str, object]) -> AccessRules:
        return cls({cam: Rule.build(r.allow, r.windows) for cam, r in access.items()})  # type: ignore[attr-defined]

    def decide(self, event: Event) -> str | None:
        """The decision for ``event`` at its decision time, or None where its camera has no rule."""
        rule = self.rules.get(event.camera)
        return None if rule is None else rule.decide(event, event.decided_at)
