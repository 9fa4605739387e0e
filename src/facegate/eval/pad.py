"""Presentation attack detection error rates (ISO/IEC 30107-3) of the passive liveness check.

``facegate eval --pad DIR``: ``DIR/live/`` holds bona fide photos, ``DIR/spoof/`` attacks (prints,
screens), each searched recursively. A sub-folder of ``spoof/`` that holds photos is one attack
species (``spoof/print/``, ``spoof/replay/``); photos directly in ``spoof/`` are the species "spoof".

At the check's own decision (the live class wins the models' summed softmax; no threshold):

- APCER: the share of attack presentations of one species accepted as live; the figure reported is
  the worst species' (ISO/IEC 30107-3 reports APCER per species, and the maximum);
- BPCER: the share of bona fide presentations refused as attacks;
- ACER = (APCER + BPCER) / 2 (the standard's average classification error rate, with the worst APCER).

A photo where no face is found is a failure to acquire: left out of the rates and counted.
Everything goes through the server's own ``Pipeline`` (its main face, ``Pipeline.passive_check``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facegate.config import Settings
from facegate.errors import FaceGateError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class PadSample:
    path: str
    #: "live" or "spoof".
    label: str
    #: The attack species (a sub-folder of spoof/), "" for a live photo.
    species: str = ""
    #: The check's decision; None when no face was found (or the photo could not be read).
    live: bool | None = None
    score: float | None = None
    models: dict[str, float] = field(default_factory=dict)
    error: str | None = None


def list_folder(folder: str | Path) -> list[tuple[Path, str, str]]:
    """(photo, label, species) for every photo under ``folder/live`` and ``folder/spoof``, sorted.

    ``ValueError`` when ``folder`` is not a folder or holds no photo in either."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder")
    out: list[tuple[Path, str, str]] = []
    for label in ("live", "spoof"):
        sub = root / label
        if not sub.is_dir():
            continue
        for p in sorted(sub.rglob("*")):
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
                rel = p.relative_to(sub).parts
                species = "" if label == "live" else (rel[0] if len(rel) > 1 else "spoof")
                out.append((p, label, species))
    if not out:
        raise ValueError(f"{root} holds no photo in live/ or spoof/ (a PAD folder is DIR/live/*.jpg and DIR/spoof/*.jpg)")
    return out


def _rate(bad: int, n: int) -> float | None:
    return bad / n if n else None


def pad_metrics(samples: list[PadSample]) -> dict[str, Any]:
    """APCER (worst species, and each), BPCER, ACER at the check's decision, and the counts behind them."""
    live = [s for s in samples if s.label == "live" and s.live is not None]
    spoof = [s for s in samples if s.label == "spoof" and s.live is not None]
    species: dict[str, dict[str, Any]] = {}
    for name in sorted({s.species for s in spoof}):
        judged = [s for s in spoof if s.species == name]
        accepted = sum(1 for s in judged if s.live)
        species[name] = {"attacks": len(judged), "accepted": accepted, "apcer": _rate(accepted, len(judged))}
    refused = sum(1 for s in live if not s.live)
    apcer = max((v["apcer"] for v in species.values()), default=None)
    bpcer = _rate(refused, len(live))
    return {
        "bona_fide": len(live),
        "bona_fide_refused": refused,
        "attacks": len(spoof),
        "attacks_accepted": sum(v["accepted"] for v in species.values()),
        "no_face": {
            "live": sum(1 for s in samples if s.label == "live" and s.live is None),
            "spoof": sum(1 for s in samples if s.label == "spoof" and s.live is None),
        },
        "apcer": apcer,
        "apcer_species": species,
        "bpcer": bpcer,
        "acer": (apcer + bpcer) / 2 if apcer is not None and bpcer is not None else None,
        "decision": "live when the live class wins the models' summed softmax (the reference's argmax; no threshold)",
    }


def score_photos(pipe, photos: list[tuple[Path, str, str]], progress: Callable[[int], None] | None = None) -> list[PadSample]:
    """The passive check of each photo's main face, as ``POST /v1/liveness`` does it."""
    from facegate.vision.imageio import read_image_file

    out = []
    for path, label, species in photos:
        try:
            image = read_image_file(str(path), pipe.limits)
            lf = pipe.locate(image, field=path.name)
            res = pipe.passive_check(image, [lf])[0]
            out.append(PadSample(str(path), label, species, res.live, res.score, {m.name: m.score for m in res.models}))
        except FaceGateError as exc:
            if getattr(exc, "code", "") == "liveness_unavailable":
                raise
            out.append(PadSample(str(path), label, species, error=exc.message))
        if progress:
            progress(1)
    return out


def evaluate_pad(folder: str | Path, settings: Settings, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Score every photo of a PAD folder with the liveness models imported into ``settings.models_dir``.

    The detector and its settings are the server's; the gallery is a throwaway one (nothing is read
    from or written to the real one). ``ValueError`` for a bad folder; ``LivenessUnavailableError``
    when no liveness model is imported.
    """
    from facegate.pipeline import Pipeline
    from facegate.vision.liveness import NO_MODEL, LivenessUnavailableError, load_liveness

    photos = list_folder(folder)
    liveness = load_liveness(settings.models_dir)
    if liveness is None:
        raise LivenessUnavailableError(f"{NO_MODEL} (looked in {settings.models_dir})")
    with tempfile.TemporaryDirectory(prefix="facegate-pad-") as tmp:
        local = Settings(**{**settings.model_dump(), "data_dir": Path(tmp), "gallery": None, "model": "sface", "liveness": "off"})
        pipe = Pipeline.from_settings(local)
        pipe.liveness = liveness
        try:
            samples = score_photos(pipe, photos, progress)
        finally:
            pipe.close()
    return {
        "folder": str(folder),
        "models": liveness.names,
        "photos": len(photos),
        **pad_metrics(samples),
        "samples": [s.__dict__ for s in samples],
    }


def save_histogram(result: dict[str, Any], path: str | Path) -> Path:
    """A PNG of the fused live scores, bona fide and attacks apart (the decision is the argmax, not a line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    bins = np.linspace(0, 1, 41)
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, colour in (("live", "tab:green"), ("spoof", "tab:red")):
        s = [x["score"] for x in result["samples"] if x["label"] == label and x["score"] is not None]
        if s:
            ax.hist(s, bins=bins, alpha=0.6, color=colour, label=f"{'bona fide' if label == 'live' else 'attacks'} ({len(s)})")
    ax.set_xlabel("fused live score (mean live-class probability)")
    ax.set_ylabel("photos")
    bp, ap = result.get("bpcer"), result.get("apcer")
    said = [f"BPCER {100 * bp:.1f}%" if bp is not None else "", f"APCER {100 * ap:.1f}%" if ap is not None else ""]
    ax.set_title("Passive liveness: " + ", ".join(x for x in said if x) + f" ({', '.join(result['models'])})", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def report_lines(result: dict[str, Any]) -> list[str]:
    """The figures in words, a line each."""
    lines = [
        f"PAD on {result['folder']} with {', '.join(result['models'])}: {result['bona_fide']} bona fide, "
        f"{result['attacks']} attack photos judged (no face found: {result['no_face']['live']} live, {result['no_face']['spoof']} spoof)",
        f"APCER {pct(result['apcer'])} ({result['attacks_accepted']} of {result['attacks']} attacks accepted as live; worst species)",
    ]
    if len(result["apcer_species"]) > 1:
        lines += [f"  APCER {name}: {pct(v['apcer'])} ({v['accepted']} of {v['attacks']})" for name, v in result["apcer_species"].items()]
    lines += [
        f"BPCER {pct(result['bpcer'])} ({result['bona_fide_refused']} of {result['bona_fide']} bona fide refused as spoof)",
        f"ACER  {pct(result['acer'])}",
        f"decision: {result['decision']}",
    ]
    return lines
