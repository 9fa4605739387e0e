"""``facegate gallery migrate``: copy a gallery between the embedded backend and PostgreSQL.

Everything moves, with its ids and timestamps: people, faces (vectors, crops, labels), API key
hashes, the audit log, the event log (with its crops), the webhooks (with their secrets) and their
delivery log, plus one audit entry saying the gallery was migrated. What the embedded gallery seals
with its key (names, crops, labels, event names and crops, webhook secrets) is opened on the way to
PostgreSQL, which holds them in the clear, and sealed with the key on the way back. The destination
must be empty; it is written in one transaction, so a failure leaves it empty. Then a verification
step compares counts, a sample of vectors and crops byte for byte, every event (fields and crop),
webhook and delivery row, and checks that the destination finds each sampled vector's own face
first. The source is never changed. The whole gallery passes through memory once (event crops
included, about 4.5 kB an event); the read-back for the verification holds the crops' digests.
"""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facegate.security import audit
from facegate.security.encryption import Sealer
from facegate.errors import FaceGateError
from .names import rekeyed
from .common import name_key
from .sqlite import DB_NAME, INDEX_META, INDEX_NAME, Gallery
from .postgres import PgGallery, _audit, as_vector, is_postgres_url, redact

BATCH = 1000
#: Audit action recorded in the destination.
MIGRATE = "migrate"


class MigrationError(FaceGateError):
    code = "migration_failed"


@dataclass
class Dump:
    """A gallery in transit: rows as plain tuples, vectors as float32 arrays, crops in the clear."""

    model_id: str
    dim: int
    people: list[tuple[int, str, str, str]] = field(default_factory=list)  # id, name, name_key, created_at
    faces: list[tuple[int, int, str, np.ndarray, bytes | None, str | None, str]] = field(default_factory=list)
    keys: list[tuple[str, str, str, str, str, str | None]] = field(default_factory=list)
    audit: list[tuple[int, str, str, str, int | None, dict]] = field(default_factory=list)
    #: seq, id, camera, started_at, decided_at, status, person_id, name, similarity, track_id, frames,
    #: identified, liveness, decision, crop (name and crop in the clear)
    events: list[tuple] = field(default_factory=list)
    webhooks: list[tuple[str, str, str, str, float]] = field(default_factory=list)  # id, url, secret (clear), filters, created_at
    #: seq, webhook_id, event_id, attempt, at, status_code, error, duration_ms
    deliveries: list[tuple] = field(default_factory=list)


def _describe(target: str) -> str:
    return redact(target) if is_postgres_url(target) else str(Path(target))


# ----------------------------------------------------------------------------- reading
def read_sqlite(data_dir: Path, encryption_key: str | None, digests: bool = False) -> Dump:
    db = Path(data_dir) / DB_NAME
    if not db.is_file():
        raise MigrationError(f"no gallery in {data_dir} (no {DB_NAME})")
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
        if "model_id" not in meta:
            raise MigrationError(f"the gallery in {data_dir} has no model yet: nothing to migrate")
        if "encryption" in meta:
            if not encryption_key:
                raise MigrationError(f"the gallery in {data_dir} is encrypted: set FACEGATE_ENCRYPTION_KEY to its key")
            sealer = Sealer(encryption_key)
            if sealer.fingerprint != meta["encryption"]:
                raise MigrationError(f"FACEGATE_ENCRYPTION_KEY is not the key the gallery in {data_dir} was sealed with")
        else:
            sealer = Sealer(None)
        dim = int(meta["dim"])
        d = Dump(meta["model_id"], dim)
        con.execute("BEGIN")  # one consistent snapshot
        # Names and their lookup keys in the clear, as every destination holds them; the keys made again
        # (a gallery not opened since names were compared by look holds keys of the earlier kind).
        sealed = meta.get("names") == "sealed"
        rows = [(pid, sealer.open_text(n) if sealed else n, at) for pid, n, at in con.execute("SELECT id, name, created_at FROM people ORDER BY id")]
        d.people = _with_keys(rows)
        for fid, pid, model, emb, crop, source, at in con.execute(
            "SELECT id, person_id, model_id, embedding, crop, source, created_at FROM faces ORDER BY id"
        ):
            v = np.frombuffer(sealer.open(emb), dtype=np.float32)
            if source is not None and meta.get("sources") == "sealed":
                source = sealer.open_text(source)
            d.faces.append((fid, pid, model, v, sealer.open(crop), source, at))
        has_keys = con.execute("SELECT 1 FROM sqlite_master WHERE name = 'api_keys'").fetchone()
        if has_keys:
            d.keys = [tuple(r) for r in con.execute("SELECT id, role, name, secret_sha256, created_at, revoked_at FROM api_keys ORDER BY id")]
        d.audit = [
            (r[0], r[1], r[2], r[3], r[4], json.loads(r[5]))
            for r in con.execute("SELECT id, at, actor, action, person_id, detail FROM audit ORDER BY id")
        ]
        if con.execute("SELECT 1 FROM sqlite_master WHERE name = 'events'").fetchone():  # a server has run on it
            # sealed with the gallery's key once marked so (gallery/events.py: seal_event_rows)
            ev = sealer if meta.get("events") == "sealed" else Sealer(None)
            _read_events(con, d, ev.open_text, ev.open, digests)
        con.execute("COMMIT")
    finally:
        con.close()
    return d


_EVENT_COLUMNS = (
    "seq, id, camera, started_at, decided_at, status, person_id, name, similarity, track_id, frames, identified, liveness, decision, crop"
)
_HOOK_COLUMNS = "id, url, secret, filters, created_at"
_DELIVERY_COLUMNS = "seq, webhook_id, event_id, attempt, at, status_code, error, duration_ms"


def _read_events(
    con, d: Dump, open_text: Callable[[str], str], open_bytes: Callable, digests: bool = False, rows=None
) -> None:
    """The event log, webhooks and deliveries into ``d``, names, crops and secrets opened (both backends);
    with ``digests``, each event crop's SHA-256 instead of its bytes (the verification's read-back).
    ``rows``: a cursor that fetches the events a batch at a time (PostgreSQL's server-side cursor; a
    plain query there would hold the whole result, crops included, twice)."""
    for r in (rows or con).execute(f"SELECT {_EVENT_COLUMNS} FROM events ORDER BY seq"):
        r = list(r)
        r[0], r[9] = int(r[0]), int(r[9])
        r[7] = None if r[7] is None else open_text(r[7])
        r[14] = None if r[14] is None else open_bytes(bytes(r[14]))
        if digests:
            r[14] = _crop_digest(r[14])
        d.events.append(tuple(r))
    d.webhooks = [(r[0], r[1], open_text(r[2]), r[3], r[4]) for r in con.execute(f"SELECT {_HOOK_COLUMNS} FROM webhooks ORDER BY id")]
    d.deliveries = [(int(r[0]), *r[1:]) for r in con.execute(f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries ORDER BY seq")]


def _with_keys(people: list[tuple[int, str, str]]) -> list[tuple[int, str, str, str]]:
    """(id, name, name_key, created_at) from (id, plain name, created_at), the keys as this FaceGate makes them."""
    keys = dict(rekeyed([(pid, name) for pid, name, _ in people], name_key)[0])
    return [(pid, name, keys[pid], at) for pid, name, at in people]


def read_pg(url: str, digests: bool = False) -> Dump:
    g = PgGallery.open_existing(url)
    if g is None:
        raise MigrationError(f"no gallery in {redact(url)}")
    try:
        with g._pool.connection() as con:
            con.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            d = Dump(g.model_id, g.dim)
            d.people = _with_keys([(int(r[0]), r[1], r[2]) for r in con.execute("SELECT id, name, created_at FROM people ORDER BY id")])
            d.faces = [
                (int(r[0]), int(r[1]), r[2], as_vector(r[3]), None if r[4] is None else bytes(r[4]), r[5], r[6])
                for r in con.execute("SELECT id, person_id, model_id, embedding, crop, source, created_at FROM faces ORDER BY id")
            ]
            d.keys = [tuple(r) for r in con.execute("SELECT id, role, name, secret_sha256, created_at, revoked_at FROM api_keys ORDER BY id")]
            d.audit = [
                (int(r[0]), r[1], r[2], r[3], r[4], r[5])
                for r in con.execute("SELECT id, at, actor, action, person_id, detail FROM audit ORDER BY id")
            ]
            with con.cursor(name="facegate_migrate_events") as rows:  # PostgreSQL holds them in the clear
                rows.itersize = 500
                _read_events(con, d, lambda t: t, lambda b: b, digests, rows)
            con.execute("COMMIT")
    finally:
        g.close()
    return d


# ----------------------------------------------------------------------------- writing
def _batches(rows: list, size: int = BATCH) -> Iterator[list]:
    for i in range(0, len(rows), size):
        yield rows[i : i + size]


def write_pg(d: Dump, url: str, progress: Callable[[int], None], **pg_options) -> None:
    """Into an empty PostgreSQL gallery, in one transaction; the HNSW index is built once, after the rows."""
    g = PgGallery(url, d.model_id, d.dim, **pg_options)
    try:
        with g._pool.connection() as con, con.transaction():
            people, faces = con.execute("SELECT people, faces FROM gallery_state FOR UPDATE").fetchone()
            nkeys = con.execute("SELECT COUNT(*) FROM api_keys").fetchone()[0]
            nevents = con.execute("SELECT (SELECT COUNT(*) FROM events) + (SELECT COUNT(*) FROM webhooks)").fetchone()[0]
            if people or faces or nkeys or nevents:
                raise MigrationError(
                    f"the destination {redact(url)} is not empty ({people} people, {faces} faces, {nkeys} keys, "
                    f"{nevents} events and webhooks): migrate into an empty database"
                )
            con.execute("DROP INDEX IF EXISTS faces_hnsw_%s" % int(d.dim))  # built once at the end: much faster than row by row
            with con.cursor() as cur:
                for chunk in _batches(d.people):
                    cur.executemany("INSERT INTO people (id, name, name_key, created_at) VALUES (%s, %s, %s, %s)", chunk)
                for chunk in _batches(d.faces):
                    cur.executemany(
                        "INSERT INTO faces (id, person_id, model_id, embedding, crop, source, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                        chunk,
                    )
                    progress(len(chunk))
                cur.executemany(
                    "INSERT INTO api_keys (id, role, name, secret_sha256, created_at, revoked_at) VALUES (%s, %s, %s, %s, %s, %s)", d.keys
                )
                cur.executemany(
                    "INSERT INTO audit (id, at, actor, action, person_id, detail) VALUES (%s, %s, %s, %s, %s, %s::jsonb)",
                    [(i, at, actor, action, pid, json.dumps(detail)) for i, at, actor, action, pid, detail in d.audit],
                )
                for chunk in _batches(d.events):
                    cur.executemany(f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES ({', '.join(['%s'] * 15)})", chunk)
                cur.executemany(f"INSERT INTO webhooks ({_HOOK_COLUMNS}) VALUES (%s, %s, %s, %s, %s)", d.webhooks)
                for chunk in _batches(d.deliveries):
                    cur.executemany(f"INSERT INTO webhook_deliveries ({_DELIVERY_COLUMNS}) VALUES ({', '.join(['%s'] * 8)})", chunk)
            for table, column in (("people", "id"), ("faces", "id"), ("audit", "id"), ("events", "seq"), ("webhook_deliveries", "seq")):
                con.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), GREATEST((SELECT MAX({column}) FROM {table}), 1), "
                    f"(SELECT MAX({column}) FROM {table}) IS NOT NULL)"
                )
            con.execute(
                "UPDATE gallery_state SET people = %s, faces = %s, generation = generation + 1", (len(d.people), len(d.faces))
            )
            g._ensure_index(con, d.dim)
            _audit(con, MIGRATE, None, **_counts(d))
    finally:
        g.close()


def _counts(d: Dump) -> dict[str, int]:
    """The migration's audit detail."""
    return {"faces": len(d.faces), "people": len(d.people), "events": len(d.events), "webhooks": len(d.webhooks)}


def write_sqlite(d: Dump, data_dir: Path, encryption_key: str | None, progress: Callable[[int], None]) -> None:
    """Into an empty embedded gallery, in one SQLite transaction; the HNSW index is built when it is next opened."""
    from facegate.security.keys import KeyStore

    from .events import SqliteEventStore

    data_dir = Path(data_dir)
    g = Gallery(data_dir, d.model_id, d.dim, encryption_key=encryption_key)
    try:
        if g.face_count or g.person_count:
            raise MigrationError(f"the destination {data_dir} is not empty ({g.person_count} people, {g.face_count} faces)")
    finally:
        g.close()
    KeyStore(data_dir / DB_NAME).close()  # the api_keys table
    SqliteEventStore(data_dir / DB_NAME, encryption_key).close()  # the event tables (marked sealed with a key)
    sealer = Sealer(encryption_key)
    con = sqlite3.connect(data_dir / DB_NAME, isolation_level=None, timeout=30)
    try:
        con.execute("PRAGMA foreign_keys=ON")
        con.execute("BEGIN IMMEDIATE")
        try:
            if con.execute("SELECT COUNT(*) FROM api_keys").fetchone()[0]:
                raise MigrationError(f"the destination {data_dir} already holds API keys: migrate into an empty data directory")
            if con.execute("SELECT (SELECT COUNT(*) FROM events) + (SELECT COUNT(*) FROM webhooks)").fetchone()[0]:
                raise MigrationError(f"the destination {data_dir} already holds events or webhooks: migrate into an empty data directory")
            con.executemany(
                "INSERT INTO people (id, name, name_key, created_at) VALUES (?, ?, ?, ?)",
                [(i, sealer.seal_text(n), sealer.blind(k), at) for i, n, k, at in d.people],
            )
            for chunk in _batches(d.faces):
                con.executemany(
                    "INSERT INTO faces (id, person_id, model_id, embedding, crop, source, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (f, p, m, sealer.seal(np.asarray(v, np.float32).tobytes()), sealer.seal(c), None if s is None else sealer.seal_text(s), at)
                        for f, p, m, v, c, s, at in chunk
                    ],
                )
                progress(len(chunk))
            con.executemany("INSERT INTO api_keys (id, role, name, secret_sha256, created_at, revoked_at) VALUES (?, ?, ?, ?, ?, ?)", d.keys)
            con.executemany(
                "INSERT INTO audit (id, at, actor, action, person_id, detail) VALUES (?, ?, ?, ?, ?, ?)",
                [(i, at, actor, action, pid, json.dumps(detail)) for i, at, actor, action, pid, detail in d.audit],
            )
            for chunk in _batches(d.events):
                con.executemany(
                    f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES ({', '.join(['?'] * 15)})",
                    [(*e[:7], None if e[7] is None else sealer.seal_text(e[7]), *e[8:14], sealer.seal(e[14])) for e in chunk],
                )
            con.executemany(
                f"INSERT INTO webhooks ({_HOOK_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
                [(i, url, sealer.seal_text(secret), f, at) for i, url, secret, f, at in d.webhooks],
            )
            for chunk in _batches(d.deliveries):
                con.executemany(f"INSERT INTO webhook_deliveries ({_DELIVERY_COLUMNS}) VALUES ({', '.join(['?'] * 8)})", chunk)
            audit.record(con.cursor(), MIGRATE, None, **_counts(d))
            con.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    finally:
        con.close()
    for f in (INDEX_NAME, INDEX_META):  # stale by generation anyway; the next open rebuilds it
        (data_dir / f).unlink(missing_ok=True)


# ----------------------------------------------------------------------------- verification
@dataclass
class Verification:
    people: tuple[int, int]
    faces: tuple[int, int]
    keys: tuple[int, int]
    audit: tuple[int, int]
    sampled: int
    problems: list[str]
    events: tuple[int, int] = (0, 0)
    webhooks: tuple[int, int] = (0, 0)
    deliveries: tuple[int, int] = (0, 0)

    @property
    def ok(self) -> bool:
        return not self.problems


def _crop_digest(c: bytes | None) -> str | None:
    return None if c is None else hashlib.sha256(c).hexdigest()


def verify(src: Dump, dst: Dump, open_dst: Callable[[], object], sample: int = 200, seed: int = 0) -> Verification:
    """Counts equal (the destination's audit has one entry more: the migration); sampled vectors and crops
    identical; every event (fields, crop), webhook (secret too) and delivery row identical; and the
    destination's search finds each sampled vector's own face first."""
    problems = []
    counts = {
        "people": (len(src.people), len(dst.people)),
        "faces": (len(src.faces), len(dst.faces)),
        "keys": (len(src.keys), len(dst.keys)),
        "audit": (len(src.audit) + 1, len(dst.audit)),
        "events": (len(src.events), len(dst.events)),
        "webhooks": (len(src.webhooks), len(dst.webhooks)),
        "deliveries": (len(src.deliveries), len(dst.deliveries)),
    }
    for what, (a, b) in counts.items():
        if a != b:
            problems.append(f"{what}: expected {a}, found {b}")
    if [p[:3] for p in src.people] != [p[:3] for p in dst.people]:
        problems.append("people differ (ids, names)")
    if src.keys != dst.keys:
        problems.append("API keys differ")
    theirs = {e[1]: e for e in dst.events}
    for e in src.events:
        other = theirs.get(e[1])
        if other is None:
            problems.append(f"event {e[1]} missing")
        elif other[:14] != e[:14]:
            problems.append(f"event {e[1]}: fields differ")
        elif other[14] != e[14]:  # bytes, or both SHA-256 digests (migrate_gallery)
            problems.append(f"event {e[1]}: crop differs")
        if len(problems) > 50:
            break
    if src.webhooks != dst.webhooks:
        problems.append("webhooks differ (ids, URLs, secrets, filters)")
    if src.deliveries != dst.deliveries:
        problems.append("webhook delivery logs differ")
    by_id = {f[0]: f for f in dst.faces}
    picks = random.Random(seed).sample(src.faces, min(sample, len(src.faces)))
    gallery = open_dst()
    try:
        for fid, pid, model, v, crop, source, at in picks:
            other = by_id.get(fid)
            if other is None:
                problems.append(f"face {fid} missing")
                continue
            if other[1] != pid or other[2] != model or other[5] != source:
                problems.append(f"face {fid}: owner, model or label differs")
            if not np.array_equal(np.asarray(other[3], np.float32), np.asarray(v, np.float32)):
                problems.append(f"face {fid}: vector differs")
            if _crop_digest(other[4]) != _crop_digest(crop):
                problems.append(f"face {fid}: crop differs")
            hits = gallery.search(v, 1, exact=True)
            if not hits or hits[0].similarity < 1.0 - 1e-4:
                problems.append(f"face {fid}: the destination does not find it")
    finally:
        gallery.close()
    return Verification(
        counts["people"], counts["faces"], counts["keys"], counts["audit"], len(picks), problems,
        counts["events"], counts["webhooks"], counts["deliveries"],
    )


# ----------------------------------------------------------------------------- the command
def migrate_gallery(
    source: str,
    destination: str,
    *,
    encryption_key: str | None = None,
    pg_options: dict | None = None,
    progress: Callable[[int], None] = lambda n: None,
    on_total: Callable[[int], None] = lambda n: None,
    sample: int = 200,
) -> Verification:
    """Copy the gallery at ``source`` to the empty ``destination`` (a data directory or a postgresql:// URL) and verify it."""
    pg_options = pg_options or {}
    src_pg, dst_pg = is_postgres_url(source), is_postgres_url(destination)
    if src_pg == dst_pg:
        raise MigrationError("migrate copies between a data directory and a postgresql:// URL: give one of each")
    d = read_pg(source) if src_pg else read_sqlite(Path(source), encryption_key)
    on_total(len(d.faces))
    if dst_pg:
        write_pg(d, destination, progress, **pg_options)
    else:
        write_sqlite(d, Path(destination), encryption_key, progress)
    # Written: the event crops are compared by digest, so two copies of them are never in memory at once.
    d.events = [(*e[:14], _crop_digest(e[14])) for e in d.events]
    if dst_pg:
        back = read_pg(destination, digests=True)
        opener = lambda: PgGallery(destination, d.model_id, d.dim, **pg_options)  # noqa: E731
    else:
        back = read_sqlite(Path(destination), encryption_key, digests=True)
        opener = lambda: Gallery(Path(destination), d.model_id, d.dim, encryption_key=encryption_key)  # noqa: E731
    return verify(d, back, opener, sample=sample)
