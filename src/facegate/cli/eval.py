"""`facegate eval` and `facegate calibrate`: measure the pipeline on labelled photos, set the threshold from a FAR.

Registered on the main ``facegate`` command in ``cli.py``; the figures come from ``facegate.eval.evaluate``.
"""

from __future__ import annotations

import json
import os
import re
import sys
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


#: The compact table's columns (fits 80 columns): (heading, figure).
_COMPACT = (
    ("retry", lambda r, v, i: r["retry_rate"]),
    ("enrol\nleft out", lambda r, v, i: r["enroll_reject_rate"]),
    ("TAR\n1e-3", lambda r, v, i: v.get("tar@far=0.001")),
    ("EER", lambda r, v, i: v.get("eer")),
    ("FNIR\nFPIR1%", lambda r, v, i: i["fnir@fpir=0.01"]),
    ("named", lambda r, v, i: i["correct_rate"]),
    ("stranger\nin", lambda r, v, i: i["stranger_accept_rate"]),
)


def compact_table(results: list[dict[str, Any]]) -> Table:
    """The main figures in 80 columns: variant and set in one folded column (``--wide``: every figure)."""
    from rich import box

    t = Table(title="facegate eval (rates in %; --wide for all)", box=box.SIMPLE_HEAD, pad_edge=False)
    t.add_column("variant / set", overflow="fold", min_width=10)
    for head, _ in _COMPACT:
        t.add_column(head, justify="right", no_wrap=True)
    for r in results:
        v, i = r["verification"], r["identification"]
        t.add_row(escape(f"{r['variant']} / {r['degradation']}"), *(_pct(f(r, v, i)) for _, f in _COMPACT))
    return t


def summary_table(results: list[dict[str, Any]]) -> Table:
    """One row per (variant, set), every figure (``--wide``)."""
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
    folder: Annotated[Optional[Path], typer.Argument(help="A folder with one sub-folder of photos per person.")] = None,
    config: ConfigOpt = None,
    compare: Annotated[
        Optional[str],
        typer.Option(
            help="Variants side by side, comma-separated: 'default' or key=value[+key=value], any setting or rank=nearest; "
            "e.g. default,landmarks=blazeface,tta=none,detector=full,rank=nearest,quality_gate=false. "
            "Each after the first is also compared with it on the same faces: the difference and its 95 % interval."
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
    wide: Annotated[bool, typer.Option("--wide", help="The table with every figure (wider than 80 columns).")] = False,
    edc: Annotated[
        bool,
        typer.Option(
            "--edc",
            help="Also error-versus-discard curves of each quality signal and of the gates, per set: "
            "edc-*.png and edc.json in the plots folder, and a table.",
        ),
    ] = False,
    far: Annotated[
        float, typer.Option(help="With --edc: the FMR the comparison threshold is fixed at, on the full set.")
    ] = 1e-3,
    pad: Annotated[
        Optional[Path],
        typer.Option(
            "--pad",
            help="Instead: the passive liveness check on DIR/live/ and DIR/spoof/ photos: APCER, BPCER, ACER "
            "(ISO/IEC 30107-3) and pad-scores.png in the plots folder.",
        ),
    ] = None,
) -> None:
    """Measure recognition on labelled photos with the server's own pipeline: verification, open-set identification, misses, quality rejects."""
    from facegate.eval.evaluate import DEGRADATIONS, paired_lines, paired_report, save_plots

    if pad is not None:
        _pad(pad, config, plots, no_plots, as_json)
        return
    if folder is None:
        console.print("[red]error:[/red] say which folder to measure: facegate eval FOLDER (or --pad DIR)")
        raise typer.Exit(2)

    if edc and not 0 < far < 1:
        console.print("[red]error:[/red] --far must be between 0 and 1")
        raise typer.Exit(2)

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
    curves = _edc(results, far, plots, no_plots, folder) if edc else None
    if curves is not None:
        files += curves["files"]
    table = summary_table(results) if wide else compact_table(results)
    paired = paired_report(results, seed=seed)
    if as_json:
        Console(stderr=True, width=None if console.is_terminal or not wide else 200).print(table)
        if paired:
            print("\n".join(paired_lines(paired)), file=sys.stderr)
        if curves is not None:
            print("\n".join(curves["lines"]), file=sys.stderr)
        doc = {
            "folder": str(folder),
            "enroll": enroll,
            "strangers": strangers,
            "seed": seed,
            "plots": files,
            "results": [{k: v for k, v in r.items() if not k.startswith("_")} for r in results],
        }
        if curves is not None:
            doc["edc"] = curves["doc"]
        if paired:
            doc["paired"] = paired
        print(json.dumps(doc, indent=2))
    else:
        out = Console()
        Console(width=None if out.is_terminal or not wide else 200).print(table)
        if paired:
            print("\n".join(paired_lines(paired)))
        if curves is not None:
            print("\n".join(curves["lines"]))
        for f in files:
            console.print(f"wrote {escape(f)}")


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=+-]+", "_", name).strip("_") or "set"


def _edc(results: list[dict[str, Any]], far: float, plots: Path, no_plots: bool, folder: Path) -> dict[str, Any]:
    """EDC of every result: the curves' numbers (edc.json in ``plots``), a PNG each, and the 80-column tables."""
    from facegate.eval.edc import table_lines
    from facegate.eval.evaluate import edc_report, result_name, save_edc_plot

    doc: dict[str, Any] = {"folder": str(folder), "fmr": far, "sets": []}
    lines: list[str] = []
    files: list[str] = []
    for r in results:
        name = result_name(r)
        res = edc_report(r, far)
        entry: dict[str, Any] = {"variant": r["variant"], "degradation": r["degradation"], "png": None, "edc": res}
        if res is None:
            lines += [f"EDC {name}: no genuine or no impostor pair", ""]
        else:
            lines += table_lines(name, res) + [""]
            if not no_plots:
                png = save_edc_plot(name, res, plots / f"edc-{_slug(name)}.png")
                entry["png"] = str(png)
                files.append(str(png))
        doc["sets"].append(entry)
    plots.mkdir(parents=True, exist_ok=True)
    path = plots / "edc.json"
    path.write_text(json.dumps(doc, indent=1))
    files.append(str(path))
    lines.append(
        "pAUC/rnd: area under the EDC to 10% discarded over the random line's (1 = random, lower is better); "
        "p: share of random face qualities doing as well; FNMR% at 0/1/5% of genuine pairs discarded; "
        "cut@5%: signal value there; below?: YES p<=0.01, weak p<=0.05."
    )
    return {"doc": doc, "lines": lines[:-1] + _wrap(lines[-1]), "files": files}


def _wrap(text: str, width: int = 80) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width)


def _pad(folder: Path, config: Path | None, plots: Path, no_plots: bool, as_json: bool) -> None:
    """`facegate eval --pad DIR`: the figures of ``facegate.eval.pad``, a histogram PNG, JSON with --json."""
    from facegate.errors import FaceGateError
    from facegate.eval.pad import evaluate_pad, list_folder, report_lines, save_histogram

    try:
        settings = load_settings(config)
        total = len(list_folder(folder))
    except (FileNotFoundError, ValueError) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    columns = (TextColumn("{task.description:<44}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(escape(f"liveness {folder.name}"), total=total)
        try:
            result = evaluate_pad(folder, settings, lambda n: bar.advance(task, n))
        except FaceGateError as exc:
            console.print(f"[red]error:[/red] {escape(exc.message)}")
            raise typer.Exit(1) from None
    files = [] if no_plots else [str(save_histogram(result, plots / "pad-scores.png"))]
    lines = report_lines(result)
    if as_json:
        print("\n".join(lines), file=sys.stderr)
        print(json.dumps({**result, "plots": files}, indent=2))
    else:
        print("\n".join(lines))
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
