"""`facegate eval` and `facegate calibrate`: measure the pipeline on labelled photos, set the threshold from a FAR.

Registered on the main ``facegate`` command in ``cli.py``; the figures come from ``facegate.eval.evaluate``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .common import ConfigOpt, console
from facegate.config import load_settings




def _progress_factory(bar: Progress):
    def make(label: str, total: int):
        task = bar.add_task(escape(label), total=total)
        return lambda n: bar.advance(task, n)

    return make


def _pct(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{100 * v:.{digits}f}"


def summary_table(results: list[dict[str, Any]]) -> Table:
    """One row per (variant, set): the figures the README's "Accuracy" section quotes."""
    t = Table(title="facegate eval (rates in %)")
    for col in (
        "variant",
        "set",
        "no face",
        "retry",
        "enrol rej.",
        "TAR@1e-2",
        "TAR@1e-3",
        "TAR@1e-4",
        "EER",
        "rank-1",
        "FNIR@FPIR1%",
        "(answered)",
        "FNIR@FPIR0.1%",
        "named@thr",
        "wrong@thr",
        "strangers in@thr",
    ):
        t.add_column(col, justify="left" if col in ("variant", "set") else "right")
    for r in results:
        v, i = r["verification"], r["identification"]
        t.add_row(
            escape(r["variant"]),
            r["degradation"],
            _pct(r["no_face_rate"]),
            _pct(r["retry_rate"]),
            _pct(r["enroll_reject_rate"]),
            _pct(v.get("tar@far=0.01")),
            _pct(v.get("tar@far=0.001")),
            _pct(v.get("tar@far=0.0001")),
            _pct(v.get("eer")),
            _pct(i["rank1"]),
            _pct(i["fnir@fpir=0.01"]),
            _pct(i["fnir_answered@fpir=0.01"]),
            _pct(i["fnir@fpir=0.001"]),
            _pct(i["correct_rate"]),
            _pct(i["wrong_name_rate"]),
            _pct(i["stranger_accept_rate"]),
        )
    return t


def _run(folder: Path, config: Path | None, variants: list[str], degrade: list[str | None], enroll: int, strangers: float, seed: int, quiet: bool):
    from facegate.eval.evaluate import Variant, evaluate

    try:
        settings = load_settings(config)
        parsed = [Variant.parse(v) for v in variants]
    except (FileNotFoundError, ValueError) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    columns = (TextColumn("{task.description:<44}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=quiet, transient=False) as bar:
        try:
            return evaluate(folder, settings, parsed, degrade, enroll=enroll, strangers=strangers, seed=seed, progress=_progress_factory(bar))
        except (FileNotFoundError, ValueError) as exc:
            console.print(f"[red]error:[/red] {escape(str(exc))}")
            raise typer.Exit(2) from None


def eval_command(
    folder: Annotated[Path, typer.Argument(help="A folder with one sub-folder of photos per person.")],
    config: ConfigOpt = None,
    compare: Annotated[
        Optional[str],
        typer.Option(
            help="Variants side by side, comma-separated: 'default' or key=value[+key=value], any setting or rank=nearest; "
            "e.g. default,landmarks=blazeface,tta=none,detector=full,rank=nearest,quality_gate=false."
        ),
    ] = None,
    degrade: Annotated[
        Optional[str], typer.Option(help="Also measure degraded copies: grayscale,dark,sidelight,small,blur,jpeg (or all).")
    ] = None,
    enroll: Annotated[int, typer.Option(help="Photos enrolled per person (the first K, by name); the rest are probes.")] = 2,
    strangers: Annotated[float, typer.Option(help="Share of the people left out of the gallery, as strangers.")] = 0.5,
    seed: Annotated[int, typer.Option(help="Seed choosing the strangers.")] = 0,
    plots: Annotated[Path, typer.Option(help="Folder for det.png and similarity.png.")] = Path("facegate-eval"),
    no_plots: Annotated[bool, typer.Option("--no-plots", help="Write no PNG.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print every figure as JSON on stdout (the table goes to stderr).")] = False,
) -> None:
    """Measure recognition on labelled photos with the server's own pipeline: verification, open-set identification, misses, quality rejects."""
    from facegate.eval.evaluate import DEGRADATIONS, save_plots

    variants = [v for v in (compare or "default").split(",") if v.strip()]
    sets: list[str | None] = [None]
    if degrade:
        names = list(DEGRADATIONS) if degrade.strip() == "all" else [d.strip() for d in degrade.split(",") if d.strip()]
        unknown = [d for d in names if d not in DEGRADATIONS]
        if unknown:
            console.print(f"[red]error:[/red] unknown degradation(s) {', '.join(unknown)}; known: {', '.join(DEGRADATIONS)}")
            raise typer.Exit(2)
        sets += names
    results = _run(folder, config, variants, sets, enroll, strangers, seed, quiet=False)
    files = [] if no_plots else [str(p) for p in save_plots(results, plots)]
    table = summary_table(results)
    if as_json:
        Console(stderr=True, width=None if console.is_terminal else 200).print(table)
        doc = {
            "folder": str(folder),
            "enroll": enroll,
            "strangers": strangers,
            "seed": seed,
            "plots": files,
            "results": [{k: v for k, v in r.items() if not k.startswith("_")} for r in results],
        }
        print(json.dumps(doc, indent=2))
    else:
        out = Console()
        Console(width=None if out.is_terminal else 200).print(table)
        for f in files:
            console.print(f"wrote {escape(f)}")


_THRESHOLD_LINE = re.compile(r"^\s*threshold\s*=")
_NOTE = "# threshold: set by `facegate calibrate`"


def write_threshold(path: Path, threshold: float, note: str) -> None:
    """Set the top-level ``threshold`` key of a TOML settings file, keeping every other line."""
    lines = path.read_text().splitlines() if path.exists() else []
    first_table = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith("[")), len(lines))
    head = [ln for ln in lines[:first_table] if not _THRESHOLD_LINE.match(ln) and not ln.startswith(_NOTE)]
    new = [f"{_NOTE} {note}", f"threshold = {threshold:.4f}"] + head + lines[first_table:]
    path.write_text("\n".join(new) + "\n")


def calibrate_command(
    folder: Annotated[Path, typer.Argument(help="A folder with one sub-folder of photos per person (your own people).")],
    far: Annotated[float, typer.Option(help="False accept rate per pair the threshold is set for.")] = 1e-3,
    config: ConfigOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the threshold, write nothing.")] = False,
) -> None:
    """Choose the similarity threshold for the active model from a target FAR, and write it into the config file.

    The file is --config, else $FACEGATE_CONFIG (created if missing); `facegate serve --config FILE`
    then runs with it, and /healthz reports it.
    """
    from facegate.eval.evaluate import calibrated_threshold

    if not 0 < far < 1:
        console.print("[red]error:[/red] --far must be between 0 and 1")
        raise typer.Exit(2)
    target = config or (Path(os.environ["FACEGATE_CONFIG"]) if os.environ.get("FACEGATE_CONFIG") else None)
    if target is None and not dry_run:
        console.print("[red]error:[/red] say which settings file to write: --config FILE (or $FACEGATE_CONFIG)")
        raise typer.Exit(2)
    if target is not None and not target.exists() and not dry_run:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("")
    cfg = target if target is not None and target.exists() else None
    results = _run(folder, cfg, ["default"], [None], 2, 0.5, 0, quiet=False)
    r = results[0]
    try:
        thr, tar = calibrated_threshold(r, far)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    model_id = r["settings"]["model_id"]
    v = r["verification"]
    msg = (
        f"{model_id}: threshold {thr:.4f} gives FAR {far:g} with TAR {100 * tar:.2f}% on {escape(str(folder))} "
        f"({v['genuine_pairs']:,} genuine, {v['impostor_pairs']:,} impostor pairs; was {r['threshold']:.4f})"
    )
    print(json.dumps({"model": model_id, "far": far, "threshold": round(thr, 4), "tar": tar, "previous": r["threshold"],
                      "genuine_pairs": v["genuine_pairs"], "impostor_pairs": v["impostor_pairs"], "config": str(target) if target else None}))
    if dry_run:
        console.print(msg)
        return
    write_threshold(target, round(thr, 4), f"for {model_id} at FAR {far:g} on {folder} (TAR {100 * tar:.2f}%)")
    check = load_settings(target).threshold
    console.print(msg)
    console.print(f"wrote threshold = {check} into {escape(str(target))}; serve with: facegate serve --config {escape(str(target))}")
