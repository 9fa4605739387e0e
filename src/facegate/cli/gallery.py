"""`facegate gallery migrate`: copy a gallery between the embedded backend and PostgreSQL, then verify."""

from __future__ import annotations

from typing import Annotated

import typer

from facegate.errors import FaceGateError
from facegate.gallery.backends import _pg_options
from facegate.gallery.migrate import _describe, is_postgres_url, migrate_gallery

from .common import ConfigOpt, console, fail, settings


def migrate_command(
    source: Annotated[str, typer.Option("--from", help="a data directory, or a postgresql:// URL")],
    destination: Annotated[str, typer.Option("--to", help="an empty data directory, or an empty PostgreSQL database's URL")],
    sample: Annotated[int, typer.Option("--sample", help="vectors compared in the verification")] = 200,
    config: ConfigOpt = None,
) -> None:
    """Copy a gallery between the embedded backend and PostgreSQL (people, faces, keys, audit log, events, webhooks), then verify."""
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    s = settings(config)
    options = {k: v for k, v in _pg_options(s).items() if k != "encryption_key"}
    if is_postgres_url(source) and s.encryption_key and not is_postgres_url(destination):
        console.print("the destination is sealed with FACEGATE_ENCRYPTION_KEY")
    elif s.encryption_key and is_postgres_url(destination):
        console.print("[yellow]note:[/yellow] PostgreSQL holds the vectors unsealed: encrypt the database's storage")
    with Progress(TextColumn("copying faces"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task("", total=None)
        try:
            result = migrate_gallery(
                source,
                destination,
                encryption_key=s.encryption_key,
                pg_options=options,
                progress=lambda n: bar.advance(task, n),
                on_total=lambda n: bar.update(task, total=n),
                sample=sample,
            )
        except (FaceGateError, ConnectionError) as exc:
            fail(getattr(exc, "message", str(exc)))
    console.print(
        f"copied {result.people[1]} people, {result.faces[1]} faces, {result.keys[1]} keys, {result.audit[1]} audit entries, "
        f"{result.events[1]} events, {result.webhooks[1]} webhooks ({result.deliveries[1]} deliveries) "
        f"from {escape(_describe(source))} to {escape(_describe(destination))}"
    )
    if not result.ok:
        for p in result.problems[:20]:
            console.print(f"[red]verification:[/red] {escape(p)}")
        raise typer.Exit(1)
    console.print(
        f"verified: counts equal, {result.sampled} sampled vectors and crops identical and found by search, "
        f"events, webhooks and deliveries identical"
    )
