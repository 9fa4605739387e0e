"""`facegate keys ...` and `facegate audit`: API keys and the audit trail, from the server's machine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .common import ConfigOpt, DataOpt, console, fail, settings
from facegate.config import Settings
from facegate.errors import FaceGateError
from facegate.gallery.backends import KeyBackend, open_keys
from facegate.security.exposure import is_loopback
from facegate.security.keys import ROLES, is_last_admin

keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)


def _settings(config: Path | None, data: Path | None) -> Settings:
    return settings(config, data_dir=data)


def key_store(settings: Settings) -> KeyBackend:
    """The keys beside the gallery the settings name (SQLite in data_dir, or the PostgreSQL gallery)."""
    try:
        return open_keys(settings)
    except ConnectionError as exc:
        fail(str(exc), 1)


def check_exposure(settings: Settings, tunnel: str | None) -> None:
    """Refuse to serve where others can reach the server while no key protects it."""
    store = key_store(settings)
    try:
        protected = store.enforcing()
    finally:
        store.close()
    if protected:
        return
    if tunnel:
        console.print(f"[red]error:[/red] refusing to open a {escape(tunnel)} tunnel without API keys: "
                      "create one first with `facegate keys create --role admin`")
        raise typer.Exit(2)
    if not is_loopback(settings.host):  # no flag opens a network interface without a key (issue 19, finding 1)
        console.print(
            f"[red]error:[/red] refusing to serve on {escape(settings.host)} without API keys: anyone reaching it could "
            "enrol, delete and read faces. Create keys (`facegate keys create --role admin`, "
            "`facegate keys create --role client`), or bind to 127.0.0.1"
        )
        raise typer.Exit(2)
    console.print("no API keys yet: serving to this machine only (127.0.0.1), every route open; "
                  "`facegate keys create --role admin` turns on keys")


@keys_app.command("create")
def keys_create(
    role: Annotated[str, typer.Option(help=f"One of: {', '.join(ROLES)}. admin: enrol, delete, list, export; client: predict, identify, verify; viewer: read events.")],
    name: Annotated[str, typer.Option(help="A label to tell keys apart (e.g. 'front gate').")] = "",
    data: DataOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Create a key and print it once (it is stored hashed; it cannot be shown again)."""
    store = key_store(_settings(config, data))
    try:
        key, plain = store.create(role, name)
    except FaceGateError as exc:
        fail(exc.message, 2)
    finally:
        store.close()
    console.print(f"created {key.role} key {key.id}{' (' + escape(name) + ')' if name else ''}; keep it now, it is not shown again:")
    print(plain)


@keys_app.command("list")
def keys_list(data: DataOpt = None, config: ConfigOpt = None) -> None:
    """Every key: id, role, label, when created and revoked (never the key itself)."""
    store = key_store(_settings(config, data))
    try:
        keys = store.list()
    finally:
        store.close()
    table = Table("id", "role", "name", "created", "revoked")
    for k in keys:
        table.add_row(k.id, k.role, escape(k.name), k.created_at, k.revoked_at or "")
    Console().print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (the 8 hex digits after fg_).")],
    force: Annotated[bool, typer.Option("--force", help="Revoke the last active admin key too (no one can administer over HTTP then).")] = False,
    data: DataOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Revoke a key: running servers refuse it from their next request. Servers never reopen when the
    last key goes: they answer 401 until a new key is created."""
    store = key_store(_settings(config, data))
    try:
        keys = store.list()
        last = is_last_admin(keys, key_id)
        others = sum(1 for k in keys if k.active and k.id != key_id)
        if last and not force:
            fail(f"{key_id} is the last active admin key: {_after_last_admin(others)}. "
                 "Create another admin key first (facegate keys create --role admin), or pass --force to revoke it anyway", 1)
        key = store.revoke(key_id)
    except FaceGateError as exc:
        fail(exc.message, 1)
    finally:
        store.close()
    console.print(f"revoked {key.role} key {key.id} at {key.revoked_at}")
    if last:
        console.print(f"[yellow]warning:[/yellow] that was the last active admin key: {_after_last_admin(others)}")


def _after_last_admin(other_active_keys: int) -> str:
    """What follows the revocation of the last admin key, for the operator."""
    still = (f"the {other_active_keys} client key(s) still identify and verify, "
             "every other request that needs a key answers 401" if other_active_keys else "every request that needs a key answers 401")
    return (f"without it no one can enrol, delete, list or export over HTTP; running servers stay closed ({still}) "
            "until a new admin key is created; a server started later with no key at all serves this machine only")


def audit_command(
    limit: Annotated[int, typer.Option(help="Newest entries to show.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    data: DataOpt = None,
    config: ConfigOpt = None,
) -> None:
    """The audit log: who enrolled, deleted, exported or managed keys, and when (newest first)."""
    store = key_store(_settings(config, data))  # the log lives beside the keys (creates the tables if need be)
    try:
        entries = store.audit_log(limit)
    finally:
        store.close()
    if as_json:
        for e in entries:
            print(json.dumps(e.__dict__))
        return
    table = Table("id", "at", "actor", "action", "person", "detail")
    for e in entries:
        table.add_row(str(e.id), e.at, escape(e.actor), e.action, "" if e.person_id is None else str(e.person_id), escape(json.dumps(e.detail)))
    Console().print(table)


def gallery_new_key() -> None:
    """Print a new encryption key for FACEGATE_ENCRYPTION_KEY (keep it apart from the data directory)."""
    from facegate.security.encryption import new_key

    print(new_key())


def gallery_encrypt(data: DataOpt = None, config: ConfigOpt = None) -> None:
    """Seal an existing gallery's vectors, crops, names and source labels with FACEGATE_ENCRYPTION_KEY, in one transaction."""
    from facegate.gallery.sqlite import Gallery

    s = _settings(config, data)
    if s.gallery:
        fail("the PostgreSQL gallery is not sealed by FaceGate (pgvector must read the vectors): "
             "encrypt the database's storage instead (docs/deployment.md, PostgreSQL)", 2)
    if not s.encryption_key:
        console.print("[red]error:[/red] set FACEGATE_ENCRYPTION_KEY first (make one with `facegate gallery new-key`)")
        raise typer.Exit(2)
    try:
        gallery = Gallery.open_existing(s.data_dir)
    except FaceGateError as exc:
        fail(exc.message, 1)
    if gallery is None:
        console.print(f"[red]error:[/red] no gallery in {escape(str(s.data_dir))}; a new one is sealed from the start")
        raise typer.Exit(1)
    try:
        n = gallery.seal_existing(s.encryption_key)
    except FaceGateError as exc:
        fail(exc.message, 1)
    finally:
        gallery.close()
    console.print(f"sealed {n} faces in {escape(str(s.data_dir))}; serve with the same FACEGATE_ENCRYPTION_KEY")
