"""`facegate keys ...` and `facegate audit`: API keys and the audit trail, from the server's machine."""

from __future__ import annotations

import ipaddress
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
from facegate.security.keys import ROLES

keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)


def _settings(config: Path | None, data: Path | None) -> Settings:
    return settings(config, data_dir=data)


def key_store(settings: Settings) -> KeyBackend:
    """The keys beside the gallery the settings name (SQLite in data_dir, or the PostgreSQL gallery)."""
    try:
        return open_keys(settings)
    except ConnectionError as exc:
        fail(str(exc), 1)


def is_loopback(host: str) -> bool:
    """Only this machine can connect (a name other than localhost is treated as public)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


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
    if not is_loopback(settings.host):
        if settings.allow_no_auth:
            console.print(f"[yellow]warning:[/yellow] serving on {escape(settings.host)} with NO API key: "
                          "anyone who reaches it can enrol, delete and read the gallery")
            return
        console.print(
            f"[red]error:[/red] refusing to serve on {escape(settings.host)} without API keys: anyone reaching it could "
            "enrol, delete and read faces. Create keys (`facegate keys create --role admin`, "
            "`facegate keys create --role client`), or bind to 127.0.0.1, or pass --allow-no-auth to accept the risk"
        )
        raise typer.Exit(2)
    console.print("no API keys yet: serving to this machine only (127.0.0.1), every route open; "
                  "`facegate keys create --role admin` turns on keys")


@keys_app.command("create")
def keys_create(
    role: Annotated[str, typer.Option(help=f"One of: {', '.join(ROLES)}. admin: enrol, delete, list, export; client: predict, identify, verify.")],
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
    data: DataOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Revoke a key: running servers refuse it from their next request."""
    store = key_store(_settings(config, data))
    try:
        key = store.revoke(key_id)
    except FaceGateError as exc:
        fail(exc.message, 1)
    finally:
        store.close()
    console.print(f"revoked {key.role} key {key.id} at {key.revoked_at}")


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
    """Seal an existing gallery's vectors, crops and names with FACEGATE_ENCRYPTION_KEY, in one transaction."""
    from facegate.gallery.sqlite import Gallery

    s = _settings(config, data)
    if s.gallery:
        fail("the PostgreSQL gallery is not sealed by FaceGate (pgvector must read the vectors): "
             "encrypt the database's storage instead (README, Scaling out)", 2)
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
