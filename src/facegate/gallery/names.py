"""When two names are the same person's name: compared as they look, not as their code points.

"Ana", "Ａｎａ" (fullwidth), "Аna" (Cyrillic А) and "Ana" + U+FE0F render alike, and were four people.
A name's key is its NFKC case-folded form mapped to its confusable *skeleton* (Unicode TR39,
section 4: each character replaced by the prototype it is confusable with; ICU's SpoofChecker,
through PyICU), folded again, until it no longer changes: two names with equal keys look alike, and the
gallery keeps one. A name must also hold a visible letter or digit: one that renders blank (U+3164
HANGUL FILLER, U+2800 BRAILLE PATTERN BLANK) or is only punctuation names no one.
"""

from __future__ import annotations

import threading
import unicodedata
from collections.abc import Callable, Iterable

from facegate.errors import InvalidNameError, PersonExistsError

#: Letters (by category) that render as nothing: the Hangul fillers (Default_Ignorable_Code_Point).
BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0")
#: Invisible marks that change no glyph's look: variation selectors, the combining grapheme joiner.
_IGNORED = {c: None for c in [0x034F, *range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0), *map(ord, BLANK_LETTERS)]}

_local = threading.local()


def _checker():
    """One ICU SpoofChecker per thread (ICU's objects are not to be shared between threads)."""
    sc = getattr(_local, "checker", None)
    if sc is None:
        import icu  # PyICU (the pyicu-wheels build): ICU's TR39 implementation and its confusables data

        sc = _local.checker = icu.SpoofChecker()
    return sc


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


def skeleton(text: str) -> str:
    """TR39's skeleton of ``text`` (what it looks like: 'Аna' and 'Ana' have the same one)."""
    return _checker().getSkeleton(0, text)


def name_key(name: str) -> str:
    """The key two look-alike names share: NFKC case-folded, confusable skeleton, again until stable.

    Case-insensitive in every script, width-insensitive, blind to variation selectors, and equal for
    confusables across scripts ('Ana', 'ANA', 'Ａｎａ', 'Аna'). Costs tens of microseconds.
    """
    # Folded first, so that the key is case-insensitive whatever the skeleton does ('I' looks like 'l',
    # 'i' does not: a skeleton of the name as written would part 'EILEEN' from 'Eileen').
    key = _fold(name.translate(_IGNORED))
    for _ in range(4):  # a skeleton may hold capitals or compatibility forms again: settle it
        nxt = _fold(skeleton(key))
        if nxt == key:
            break
        key = nxt
    return key


def check_visible(name: str) -> None:
    """Refuse a name with no visible letter or digit (blank-rendering, or only punctuation and symbols)."""
    if not any(unicodedata.category(c)[0] in "LN" and c not in BLANK_LETTERS for c in name):
        raise InvalidNameError("name must hold at least one letter or digit (this one shows none)", field="user_name")


def rekeyed(people: Iterable[tuple[int, str]], key_of: Callable[[str], str]) -> tuple[list[tuple[int, str]], list[tuple[int, int]]]:
    """New lookup keys for stored ``(id, plain name)`` rows, oldest first: ``([(id, key)], [(id, look-alike of id)])``.

    People enrolled before names were compared by look may look alike: the oldest keeps the key (new
    enrolments that look like them are refused naming it), the others keep their names under a key no
    lookup computes (``key#id``), and are reported.
    """
    taken: dict[str, int] = {}
    out, clashes = [], []
    for pid, plain in sorted(people):
        key = key_of(plain)
        if key in taken:
            clashes.append((pid, taken[key]))
            key = f"{key}#{pid}"
        else:
            taken[key] = pid
        out.append((pid, key))
    return out, clashes


def exists_error(name: str, existing_name: str, existing_id: int) -> PersonExistsError:
    """The 409 for ``name``, naming the person enrolled under a name that looks the same."""
    faces = f"POST /v1/people/{existing_id}/faces"
    if name.strip() == existing_name:
        message = f"{name!r} is already enrolled (id {existing_id}); add faces with {faces}"
    elif _fold(name.strip()) == _fold(existing_name):
        message = f"{name!r} is already enrolled as {existing_name!r} (id {existing_id}); add faces with {faces}"
    else:
        message = (f"{name!r} looks like {existing_name!r}, already enrolled (id {existing_id}): choose a name that "
                   f"looks different, or add faces to them with {faces}")
    return PersonExistsError(message, field="user_name")
