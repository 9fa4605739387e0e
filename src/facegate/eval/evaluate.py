"""Accuracy of the real pipeline on a folder of labelled photos (one sub-folder per person).

Everything goes through ``Pipeline`` — detection, landmarks, alignment, quality gate, embedding
with flip TTA, the gallery's search and the ranking rule — so the figures are those of the code
the server runs. Measures:

* verification over every pair of photos: TAR at FAR 1e-2/1e-3/1e-4, EER, and the rates at the
  configured threshold;
* open-set identification: the first ``enroll`` photos of each enrolled person go into a real
  gallery, a ``strangers`` share of the people stay out, every other photo is a probe: rank-1,
  FNIR at FPIR 1% and 0.1%, and what the configured threshold answers;
* photos without a face, and faces the quality gate refuses (with the reasons);
* the same under degradations (``DEGRADATIONS``) applied on the fly: the gallery is enrolled
  from the clean photos and probed with degraded ones (a camera's frames against good enrolment
  photos); verification pairs are both degraded.

Variants (``Variant.parse``) run side by side: any Settings field, plus ``rank=nearest``.
Knows nothing of HTTP or the command line.
"""

from __future__ import annotations

import math
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from facegate.config import Settings
from facegate.errors import FaceGateError, NoFaceError
from facegate.gallery.sqlite import NewFace
from facegate.vision.imageio import ImageLimits, decode_image, encode_jpeg, read_image_file
from facegate.vision.quality import Quality
from .metrics import eer, pair_scores, tar_at_far
from facegate.pipeline import LocatedFace, Pipeline
from facegate.rank import Decision, Neighbour, rank

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
FARS = (1e-2, 1e-3, 1e-4)
FPIRS = (1e-2, 1e-3)


# ---------------------------------------------------------------------------------- degradations
def _gamma(img: np.ndarray, g: float) -> np.ndarray:
    lut = (255.0 * (np.arange(256) / 255.0) ** g).round().astype(np.uint8)
    return lut[img]


def _sidelight(img: np.ndarray) -> np.ndarray:
    """Light from the image's left: gain falls from 1.0 to 0.15 across the frame (a window on one side)."""
    w = img.shape[1]
    ramp = np.linspace(1.0, 0.15, w, dtype=np.float32)[None, :, None]
    return np.clip(img.astype(np.float32) * ramp, 0, 255).astype(np.uint8)


def _small(img: np.ndarray) -> np.ndarray:
    """Half the size: LFW's ~110 px faces become ~55 px (a face a few metres from a camera)."""
    h, w = img.shape[:2]
    return cv2.resize(img, (max(1, w // 2), max(1, h // 2)), interpolation=cv2.INTER_AREA)


def _far(img: np.ndarray) -> np.ndarray:
    """The photo at 0.6x in a grey 1280x720 frame: a ~65 px face a few metres from a wide camera."""
    small = cv2.resize(img, None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA)
    frame = np.full((720, 1280, 3), 96, np.uint8)
    h, w = small.shape[:2]
    top, left = (720 - h) // 2, (1280 - w) // 2
    frame[top : top + h, left : left + w] = small
    return frame


def _jpeg(img: np.ndarray) -> np.ndarray:
    return decode_image(encode_jpeg(img, 20), ImageLimits(min_side=1))


#: What real cameras produce, one function each (RGB uint8 in, RGB uint8 out; deterministic).
DEGRADATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "grayscale": lambda im: np.repeat(cv2.cvtColor(im, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2),
    "dark": lambda im: (_gamma(im, 2.2) // 2),  # LFW's mean face grey ~130 -> ~30: an unlit room
    "sidelight": _sidelight,
    "small": _small,
    "blur": lambda im: cv2.GaussianBlur(im, (0, 0), 2.0),  # defocus / motion at ~110 px faces
    "jpeg": _jpeg,  # quality 20
    "far": _far,  # where BlazeFace's short-range model finds nothing and the fallback detector matters
}


# ---------------------------------------------------------------------------------- variants
#: Keys of a variant that are not Settings fields.
_EXTRA_KEYS = {"rank": ("vote", "nearest")}


@dataclass(frozen=True)
class Variant:
    """A named set of Settings overrides, plus the ranking rule (``vote``: the server's; ``nearest``: top-1 only)."""

    name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    rank_rule: str = "vote"

    @classmethod
    def parse(cls, spec: str) -> Variant:
        """``default`` or ``key=value[+key=value...]``, e.g. ``landmarks=blazeface+tta=none``, ``rank=nearest``."""
        spec = spec.strip()
        if spec in ("", "default"):
            return cls("default")
        overrides: dict[str, Any] = {}
        rule = "vote"
        for part in spec.split("+"):
            key, sep, value = part.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or not key:
                raise ValueError(f"variant {spec!r}: expected key=value, got {part!r}")
            if key == "rank":
                if value not in _EXTRA_KEYS["rank"]:
                    raise ValueError(f"variant {spec!r}: rank must be vote or nearest")
                rule = value
            elif key in Settings.model_fields:
                overrides[key] = None if value.lower() == "none" and key != "tta" and key != "fallback_detector" else value
            else:
                raise ValueError(f"variant {spec!r}: unknown setting {key!r}")
        return cls(spec, overrides, rule)

    def settings(self, base: Settings, data_dir: Path) -> Settings:
        return Settings(**{**base.model_dump(), **self.overrides, "data_dir": data_dir})


# ---------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Photo:
    person: str
    path: Path


def load_folder(root: Path) -> list[Photo]:
    """Every image of every person folder (sorted, so runs repeat exactly)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder")
    photos = [
        Photo(d.name, p)
        for d in sorted(root.iterdir())
        if d.is_dir()
        for p in sorted(d.iterdir())
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    ]
    if len({p.person for p in photos}) < 2:
        raise ValueError(f"{root} needs at least two person folders with photos")
    return photos


@dataclass
class _Face:
    """One photo through the pipeline: its located face (None: no face) and the gate's answers."""

    located: LocatedFace | None
    error: str | None = None
    enroll_reasons: tuple[str, ...] = ()
    probe_reasons: tuple[str, ...] = ()
    vector: np.ndarray | None = None


# ---------------------------------------------------------------------------------- metrics
def _threshold_for_rate(scores: np.ndarray, total: int, rate: float) -> float:
    """Lowest threshold at which at most ``rate`` x ``total`` of ``scores`` reach it (the rest never do)."""
    s = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    allowed = int(math.floor(rate * total + 1e-9))
    if allowed >= len(s):
        return float(s[-1]) if len(s) else -1.0
    return float(np.nextafter(s[allowed], np.inf))


def det_curve(genuine: np.ndarray, impostor: np.ndarray, points: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """(FMR, FNMR) over a threshold sweep, for a DET plot."""
    imp = np.sort(impostor)
    gen = np.sort(genuine)
    # Every genuine score and the top impostor scores (where FMR is small) make the steps exact.
    thr = np.unique(np.concatenate([gen, imp[-5000:], np.quantile(imp, np.linspace(0, 1, points))]))
    fmr = 1.0 - np.searchsorted(imp, thr, side="left") / len(imp)
    fnmr = np.searchsorted(gen, thr, side="left") / len(gen)
    return fmr, fnmr


def verification(genuine: np.ndarray, impostor: np.ndarray, threshold: float) -> dict[str, float | int]:
    out: dict[str, float | int] = {"genuine_pairs": int(len(genuine)), "impostor_pairs": int(len(impostor))}
    if not len(genuine) or not len(impostor):
        return out
    for far in FARS:
        tar, thr = tar_at_far(genuine, impostor, far)
        out[f"tar@far={far:g}"], out[f"threshold@far={far:g}"] = tar, thr
    out["eer"], out["threshold@eer"] = eer(genuine, impostor)
    out["tar@threshold"] = float(np.mean(genuine >= threshold))
    out["far@threshold"] = float(np.mean(impostor >= threshold))
    return out


# ---------------------------------------------------------------------------------- the engine
class Evaluation:
    """Runs variants and degradations over one folder, caching what variants share (faces, vectors)."""

    def __init__(
        self,
        root: Path,
        base: Settings,
        *,
        enroll: int = 2,
        strangers: float = 0.5,
        seed: int = 0,
        progress: Callable[[str, int], Callable[[int], None]] | None = None,
    ) -> None:
        if enroll < 1:
            raise ValueError("enroll must be at least 1")
        if not 0.0 <= strangers < 1.0:
            raise ValueError("strangers must be in [0, 1)")
        self.photos = load_folder(root)
        self.root = Path(root)
        self.base = base
        self.enroll = enroll
        self.strangers = strangers
        self.seed = seed
        self.progress = progress
        self._images: dict[str | None, list[np.ndarray | None]] = {}
        self._faces: dict[tuple, list[_Face]] = {}
        self._vectors: dict[tuple, list[np.ndarray | None]] = {}
        self._tmp = tempfile.TemporaryDirectory(prefix="facegate-eval-")
        people = sorted({p.person for p in self.photos})
        rng = np.random.default_rng(seed)
        n_strangers = int(round(strangers * len(people)))
        self.stranger_people = set(rng.choice(people, n_strangers, replace=False).tolist()) if n_strangers else set()

    def close(self) -> None:
        self._tmp.cleanup()

    # ---- cached stages
    def _load(self, degradation: str | None) -> list[np.ndarray | None]:
        if degradation not in self._images:
            fn = DEGRADATIONS[degradation] if degradation else None
            imgs: list[np.ndarray | None] = []
            for p in self.photos:
                try:
                    img = read_image_file(str(p.path))
                except (FaceGateError, OSError):
                    imgs.append(None)
                    continue
                imgs.append(np.ascontiguousarray(fn(img)) if fn else img)
            self._images[degradation] = imgs
        return self._images[degradation]

    @staticmethod
    def _locate_key(s: Settings, degradation: str | None) -> tuple:
        return (s.detector, s.det_threshold, s.max_detect_side, s.landmarks, s.fallback_detector, s.illumination, degradation)

    def _located(self, pipe: Pipeline, degradation: str | None, label: str) -> list[_Face]:
        key = self._locate_key(pipe.settings, degradation)
        if key not in self._faces:
            images = self._load(degradation)
            tick = self.progress(f"{label}: detect+align", len(images)) if self.progress else None
            out: list[_Face] = []
            for img in images:
                if img is None:
                    out.append(_Face(None, "unreadable"))
                else:
                    try:
                        out.append(_Face(pipe.locate(img)))
                    except NoFaceError:
                        out.append(_Face(None, "no face"))
                    except FaceGateError as exc:
                        out.append(_Face(None, exc.code))
                if tick:
                    tick(1)
            self._faces[key] = out
        # Verdicts depend on the variant's thresholds: judge afresh (cheap).
        faces = [_Face(f.located, f.error) for f in self._faces[key]]
        for f in faces:
            if f.located is not None:
                f.enroll_reasons = pipe.judge_enroll(f.located).reasons
                f.probe_reasons = pipe.judge_probe(f.located).reasons
        return faces

    def _embedded(self, pipe: Pipeline, degradation: str | None, faces: list[_Face], label: str) -> None:
        key = self._locate_key(pipe.settings, degradation) + (pipe.embedder.model_id,)
        if key not in self._vectors:
            idx = [i for i, f in enumerate(faces) if f.located is not None]
            vecs: list[tuple[np.ndarray, float] | None] = [None] * len(faces)
            tick = self.progress(f"{label}: embed", len(idx)) if self.progress else None
            for start in range(0, len(idx), 32):
                chunk = idx[start : start + 32]
                v, n = pipe.embed_with_norm([faces[i].located.aligned for i in chunk])
                for i, vi, ni in zip(chunk, v, n):
                    vecs[i] = (vi, float(ni))
                if tick:
                    tick(len(chunk))
            self._vectors[key] = vecs
        for f, vn in zip(faces, self._vectors[key]):
            if vn is None:
                continue
            f.vector = vn[0]
            # The feature norm is a quality signal too: judge again now that it is known (as the server does).
            f.located = replace(f.located, quality=replace(f.located.quality, feature_norm=vn[1]))
            f.enroll_reasons = pipe.judge_enroll(f.located).reasons
            f.probe_reasons = pipe.judge_probe(f.located).reasons

    # ---- one run
    def run(self, variant: Variant, degradation: str | None = None) -> dict[str, Any]:
        """Every figure for one variant on the clean set (``degradation`` None) or one degraded copy."""
        if degradation is not None and degradation not in DEGRADATIONS:
            raise ValueError(f"unknown degradation {degradation!r}; known: {', '.join(DEGRADATIONS)}")
        data_dir = Path(self._tmp.name) / f"run{len(list(Path(self._tmp.name).iterdir()))}"
        settings = variant.settings(self.base, data_dir)
        # Every run shares one models folder (the data directory's, else one of its own): imported models
        # are found, and an int8 copy is built once, not in every run.
        models = self.base.models_dir if self.base.models_dir.is_dir() else Path(self._tmp.name) / "shared-models"
        models.mkdir(exist_ok=True)
        data_dir.mkdir(parents=True)
        (data_dir / "models").symlink_to(models.resolve(), target_is_directory=True)
        label = variant.name + (f" / {degradation}" if degradation else "")
        pipe = Pipeline.from_settings(settings)
        try:
            probes = self._located(pipe, degradation, label)
            self._embedded(pipe, degradation, probes, label)
            clean = probes
            if degradation is not None:
                clean = self._located(pipe, None, variant.name)
                self._embedded(pipe, None, clean, variant.name)
            result: dict[str, Any] = {
                "variant": variant.name,
                "degradation": degradation or "none",
                "settings": {k: getattr(settings, k) for k in ("detector", "landmarks", "fallback_detector", "tta", "model", "quality_gate", "top_k")}
                | {"rank": variant.rank_rule, "model_id": pipe.embedder.model_id},
                "threshold": pipe.threshold,
                "photos": len(self.photos),
            }
            result.update(self._detection_and_quality(probes))
            gate = settings.quality_gate
            usable = [i for i, f in enumerate(probes) if f.vector is not None and (not gate or not f.probe_reasons)]
            gen, imp = (
                pair_scores(np.stack([probes[i].vector for i in usable]), [self.photos[i].person for i in usable])
                if len(usable) > 1
                else (np.zeros(0), np.zeros(0))
            )
            result["verification"] = verification(gen, imp, pipe.threshold)
            result["quality_effect"] = self._quality_effect(probes)
            result["identification"] = self._identification(pipe, variant, clean, probes, gate)
            result["_scores"] = (gen, imp)
            result["_usable"] = usable  # the photos verification used (embedded, through the gate)
            result["_faces"] = self._edc_inputs(pipe, probes)
            return result
        finally:
            pipe.close()

    def _edc_inputs(self, pipe: Pipeline, faces: list[_Face]) -> dict[str, Any]:
        """What ``edc_report`` needs, for every embedded face whatever the gate says: labels, vectors,
        each quality signal (every numeric field of ``Quality``), the two gates' verdicts and their limits."""
        idx = [i for i, f in enumerate(faces) if f.vector is not None]
        qs = [faces[i].located.quality for i in idx]
        signals: dict[str, list[float | None]] = {}
        for fld in fields(Quality):
            vals = [None if q is None else getattr(q, fld.name) for q in qs]
            numeric = all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in vals)
            if numeric and any(v is not None for v in vals):
                signals[fld.name] = vals
                if fld.name == "brightness":
                    signals["brightness_hi"] = vals  # the same measure, over-lit first (the max_brightness limit)
        limits: dict[str, dict[str, float]] = {}
        for gate, th in (("gate_retry", pipe.retry_limits), ("gate_enrol", pipe.enroll_limits)):
            lim: dict[str, float] = {}
            for fld in fields(th):
                value = getattr(th, fld.name)
                kind, _, sig = fld.name.partition("_")
                if value is None or kind not in ("min", "max"):
                    continue
                lim[sig + "_hi" if kind == "max" and sig == "brightness" else sig] = float(value)
            limits[gate] = lim if pipe.settings.quality_gate else {}
        return {
            "photos": idx,
            "labels": [self.photos[i].person for i in idx],
            "vectors": np.stack([faces[i].vector for i in idx]) if idx else np.zeros((0, 0)),
            "qualities": signals,
            "gates": {
                "gate_retry": [not faces[i].probe_reasons for i in idx],
                "gate_enrol": [not faces[i].enroll_reasons for i in idx],
            },
            "limits": limits,
        }

    def _detection_and_quality(self, faces: list[_Face]) -> dict[str, Any]:
        n = len(faces)
        missed = [self.photos[i].path.relative_to(self.root).as_posix() for i, f in enumerate(faces) if f.located is None]
        enroll_rej = [f for f in faces if f.located is not None and f.enroll_reasons]
        probe_rej = [f for f in faces if f.located is not None and f.probe_reasons]

        def kinds(rej: list[_Face], attr: str) -> dict[str, int]:
            return dict(Counter(r.split(":")[0] for f in rej for r in getattr(f, attr)).most_common())

        qs = [f.located.quality for f in faces if f.located is not None]
        pct: dict[str, dict[str, float]] = {}
        for name in ("face_px", "det_score", "sharpness", "brightness", "clipped", "yaw", "roll", "feature_norm"):
            vals = np.array([abs(getattr(q, name)) if name in ("yaw", "roll") else getattr(q, name) for q in qs if getattr(q, name) is not None], dtype=np.float64)
            if len(vals):
                pct[name] = {f"p{p}": round(float(np.percentile(vals, p)), 3) for p in (1, 5, 50, 95, 99)}
        return {
            "no_face": len(missed),
            "no_face_rate": len(missed) / n if n else 0.0,
            "no_face_photos": missed[:50],
            "fallback_detections": sum(1 for f in faces if f.located is not None and f.located.face is not None and f.located.face.keypoints.shape[0] == 5),
            "enroll_rejects": len(enroll_rej),
            "enroll_reject_rate": len(enroll_rej) / n if n else 0.0,
            "enroll_reject_reasons": kinds(enroll_rej, "enroll_reasons"),
            "retry": len(probe_rej),
            "retry_rate": len(probe_rej) / n if n else 0.0,
            "retry_reasons": kinds(probe_rej, "probe_reasons"),
            "quality_percentiles": pct,
        }

    #: Signals and the direction that is worse: "low" (small, dim, blurred) or "high" (turned, clipped).
    _SIGNALS = {
        "face_px": "low",
        "det_score": "low",
        "sharpness": "low",
        "brightness": "low",
        "clipped": "high",
        "yaw": "high",
        "feature_norm": "low",
    }

    def _quality_effect(self, faces: list[_Face]) -> dict[str, list[dict[str, float]]]:
        """How errors concentrate on poor faces: for the worst 1/5/10% of each signal, the genuine pairs
        involving such a face that miss the FAR=1e-3 threshold (and impostor pairs crossing it), against
        the pairs of the other faces. Over every detected face, whatever the gate says."""
        idx = [i for i, f in enumerate(faces) if f.vector is not None]
        if len(idx) < 3:
            return {}
        vec = np.stack([faces[i].vector for i in idx])
        lab = np.array([self.photos[i].person for i in idx])
        iu = np.triu_indices(len(idx), k=1)
        sims = (vec @ vec.T)[iu]
        same = lab[iu[0]] == lab[iu[1]]
        if not same.any() or same.all():
            return {}
        _, thr = tar_at_far(sims[same], sims[~same], 1e-3)
        out: dict[str, list[dict[str, float]]] = {}
        for name, worse in self._SIGNALS.items():
            vals = np.array([getattr(faces[i].located.quality, name) for i in idx], dtype=object)
            known = np.array([v is not None for v in vals])
            x = np.array([abs(v) if v is not None else np.nan for v in vals], dtype=np.float64)
            rows = []
            for share in (0.01, 0.05, 0.10):
                cut = np.nanpercentile(x, 100 * share if worse == "low" else 100 * (1 - share))
                bad = known & ((x <= cut) if worse == "low" else (x >= cut))
                pair_bad = bad[iu[0]] | bad[iu[1]]
                g_bad, g_ok = sims[same & pair_bad], sims[same & ~pair_bad]
                i_bad, i_ok = sims[~same & pair_bad], sims[~same & ~pair_bad]
                rows.append(
                    {
                        "worst_share": share,
                        "cut": round(float(cut), 3),
                        "faces": int(bad.sum()),
                        "fnmr_bad": float(np.mean(g_bad < thr)) if len(g_bad) else None,
                        "fnmr_rest": float(np.mean(g_ok < thr)) if len(g_ok) else None,
                        "fmr_bad": float(np.mean(i_bad >= thr)) if len(i_bad) else None,
                        "fmr_rest": float(np.mean(i_ok >= thr)) if len(i_ok) else None,
                    }
                )
            out[name] = rows
        return out

    def _identification(self, pipe: Pipeline, variant: Variant, clean: list[_Face], probes: list[_Face], gate: bool) -> dict[str, Any]:
        by_person: dict[str, list[int]] = {}
        for i, p in enumerate(self.photos):
            by_person.setdefault(p.person, []).append(i)
        enrolled: dict[str, int] = {}
        probe_idx: list[int] = []
        unenrollable = 0
        for person, idx in by_person.items():
            if person in self.stranger_people:
                probe_idx += idx
                continue
            chosen = idx[: self.enroll]
            faces = [
                NewFace(clean[i].vector, None, self.photos[i].path.name)
                for i in chosen
                if clean[i].vector is not None and (not gate or not clean[i].enroll_reasons)
            ]
            probe_idx += idx[self.enroll :]
            if not faces:
                unenrollable += 1
                continue
            enrolled[person] = pipe.gallery.add_person(person, faces, pipe.embedder.model_id, pipe.settings.max_name_length).id
        k = pipe.settings.top_k
        mated, nonmated = [], []  # (true person id or None, neighbours or None when no usable face)
        for i in probe_idx:
            f = probes[i]
            usable = f.vector is not None and (not gate or not f.probe_reasons)
            neigh = pipe.gallery.search(f.vector, k) if usable else None
            pid = enrolled.get(self.photos[i].person)
            (mated if pid is not None else nonmated).append((pid, neigh))

        def decide(neigh: Sequence[Neighbour] | None, t: float) -> Decision | None:
            if neigh is None:
                return None
            if variant.rank_rule == "nearest":
                return rank(sorted(neigh, key=lambda n: -n.similarity)[:1], t, 1)
            return rank(neigh, t, k)

        tops = np.array([max((n.similarity for n in neigh), default=-1.0) for _, neigh in nonmated if neigh is not None])
        out: dict[str, Any] = {
            "people_enrolled": len(enrolled),
            "people_unenrollable": unenrollable,
            "strangers": len(by_person) - len(enrolled) - unenrollable,
            "mated_probes": len(mated),
            "nonmated_probes": len(nonmated),
        }
        with_face = [(pid, n) for pid, n in mated if n is not None]
        nearest_ok = sum(1 for pid, n in with_face if n and max(n, key=lambda x: x.similarity).person_id == pid)
        out["rank1"] = nearest_ok / len(with_face) if with_face else 0.0

        def fnir_at(t: float, probes: list) -> float:
            wrong = 0
            for pid, neigh in probes:
                d = decide(neigh, t)
                wrong += d is None or d.person_id != pid
            return wrong / len(probes) if probes else 0.0

        for fpir in FPIRS:
            t = _threshold_for_rate(tops, len(nonmated), fpir) if nonmated else -1.0
            # Every mated probe: a photo with no face or answered "retry" counts as a miss.
            out[f"fnir@fpir={fpir:g}"] = fnir_at(t, mated)
            # Only the probes the server answered with a decision (a camera sends another frame after "retry").
            out[f"fnir_answered@fpir={fpir:g}"] = fnir_at(t, with_face)
            out[f"threshold@fpir={fpir:g}"] = t
        thr = pipe.threshold
        correct = wrong = unknown = no_answer = 0
        for pid, neigh in mated:
            d = decide(neigh, thr)
            if d is None:
                no_answer += 1
            elif d.person_id == pid:
                correct += 1
            elif d.known:
                wrong += 1
            else:
                unknown += 1
        accepted = sum(1 for _, neigh in nonmated if (d := decide(neigh, thr)) is not None and d.known)
        m = max(len(mated), 1)
        out |= {
            "at_threshold": thr,
            "correct_rate": correct / m,
            "wrong_name_rate": wrong / m,
            "unknown_rate": unknown / m,
            "no_answer_rate": no_answer / m,  # no face, or "retry"
            "fnir@threshold": (len(mated) - correct) / m,
            "stranger_accept_rate": accepted / max(len(nonmated), 1),
        }
        return out


def evaluate(
    root: Path,
    base: Settings,
    variants: Sequence[Variant],
    degradations: Sequence[str | None] = (None,),
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """Every variant on every set; each result also holds its raw pair scores under ``_scores`` (for plots)."""
    ev = Evaluation(root, base, **kwargs)
    try:
        return [ev.run(v, d) for d in degradations for v in variants]
    finally:
        ev.close()


# ---------------------------------------------------------------------------------- plots
def save_plots(results: Sequence[dict[str, Any]], folder: Path) -> list[Path]:
    """A DET curve per result and the first result's similarity histogram (genuine vs impostor), as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    fig, ax = plt.subplots(figsize=(6.4, 5.2), dpi=110)
    for r in results:
        gen, imp = r["_scores"]
        if not len(gen) or not len(imp):
            continue
        fmr, fnmr = det_curve(gen, imp)
        label = r["variant"] + ("" if r["degradation"] == "none" else f" / {r['degradation']}")
        ax.step(np.maximum(fmr, 1e-6), np.maximum(fnmr, 1e-4), where="post", label=label, lw=1.3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(1e-5, 1)
    ax.set_ylim(5e-4, 1)
    for far in FARS:
        ax.axvline(far, color="grey", lw=0.5, ls=":")
    ax.set_xlabel("false match rate (impostor pairs accepted)")
    ax.set_ylabel("false non-match rate (genuine pairs rejected)")
    ax.set_title("DET, all pairs")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    p = folder / "det.png"
    fig.savefig(p)
    plt.close(fig)
    paths.append(p)
    first = next((r for r in results if len(r["_scores"][0]) and len(r["_scores"][1])), None)
    if first is not None:
        gen, imp = first["_scores"]
        fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
        bins = np.linspace(min(gen.min(), imp.min()), max(gen.max(), imp.max()), 80)
        ax.hist(imp, bins=bins, density=True, alpha=0.55, label=f"impostor ({len(imp):,} pairs)")
        ax.hist(gen, bins=bins, density=True, alpha=0.55, label=f"genuine ({len(gen):,} pairs)")
        ax.axvline(first["threshold"], color="k", lw=1, ls="--", label=f"threshold {first['threshold']:.3f}")
        ax.set_xlabel("cosine similarity")
        ax.set_ylabel("density")
        ax.set_title(f"similarity, {first['variant']}" + ("" if first["degradation"] == "none" else f" / {first['degradation']}"))
        ax.legend(fontsize=8)
        fig.tight_layout()
        p = folder / "similarity.png"
        fig.savefig(p)
        plt.close(fig)
        paths.append(p)
    return paths


def edc_report(result: dict[str, Any], fmr: float = 1e-3, *, draws: int = 2000, seed: int = 0) -> dict[str, Any] | None:
    """Error-versus-discard characteristics of one result (``facegate.eval.edc.analyse`` over its faces),
    None when the set has no genuine or no impostor pair (with no false non-match, the ratios are None)."""
    from . import edc

    d = result["_faces"]
    if len(d["labels"]) < 3:
        return None
    try:
        return edc.analyse(
            d["labels"], d["vectors"], d["qualities"], fmr=fmr, gates=d["gates"], limits=d["limits"], draws=draws, seed=seed
        )
    except ValueError:
        return None


def paired_report(results: Sequence[dict[str, Any]], *, draws: int = 1000, seed: int = 0) -> list[dict[str, Any]]:
    """Each variant after the first against the first, set by set, on the faces both embedded and let through
    their gates (``facegate.eval.paired``: the difference and its 95 % person-bootstrap interval)."""
    from .paired import paired_difference

    def kept(r: dict[str, Any]) -> dict[int, int]:
        """Photo -> its row in ``_faces``, for the photos the variant's verification used."""
        usable = set(r["_usable"])
        return {p: k for k, p in enumerate(r["_faces"]["photos"]) if p in usable}

    out = []
    by_set: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_set.setdefault(r["degradation"], []).append(r)
    for degradation, rows in by_set.items():
        base = rows[0]
        for other in rows[1:]:
            ka, kb = kept(base), kept(other)
            common = sorted(set(ka) & set(kb))
            labels = [base["_faces"]["labels"][ka[p]] for p in common]
            a = base["_faces"]["vectors"][[ka[p] for p in common]] if common else np.zeros((0, 1))
            b = other["_faces"]["vectors"][[kb[p] for p in common]] if common else np.zeros((0, 1))
            diff = paired_difference(labels, a, b, draws=draws, seed=seed)
            out.append({"a": base["variant"], "b": other["variant"], "degradation": degradation, **diff})
    return out


def paired_lines(report: Sequence[dict[str, Any]]) -> list[str]:
    """The paired differences in words and points, one line per (variant, set)."""
    if not report:
        return []
    lines = [
        "",
        "Paired differences: each variant minus the first, on the faces both kept, in points",
        "[95 % interval over people: one that holds 0 does not tell the two apart here]:",
    ]
    for d in report:
        parts = []
        for key, head in (("tar@far=0.001", "TAR@1e-3"), ("tar@far=0.0001", "TAR@1e-4"), ("eer", "EER")):
            if key in d:
                lo, hi = d[key]["ci95"]
                parts.append(f"{head} {100 * d[key]['difference']:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]")
        lines.append(f"  {d['b']} - {d['a']} / {d['degradation']}: " + (", ".join(parts) or "too few pairs"))
    return lines


def result_name(result: dict[str, Any]) -> str:
    return result["variant"] + ("" if result["degradation"] == "none" else f" / {result['degradation']}")


def save_edc_plot(name: str, res: dict[str, Any], path: Path) -> Path:
    """One EDC plot: FNMR (threshold fixed at the FMR target on the full set) against the share of genuine
    comparisons discarded, lowest pairwise quality first; one line per signal, the gates, random and ideal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = 100 * np.asarray(res["fractions"])
    fig, ax = plt.subplots(figsize=(9.0, 5.4), dpi=110)
    colours = plt.get_cmap("tab20").colors
    sig = [(k, r) for k, r in res["signals"].items() if r["kind"] != "gate"]
    for n, (k, r) in enumerate(sig):
        ratio = "-" if r["pauc_ratio"] is None else f"{r['pauc_ratio']:.2f}"
        ax.plot(f, 100 * np.asarray(r["fnmr"]), color=colours[n % 20], lw=1.2, label=f"{k} ({ratio})")
    for k, r in res["signals"].items():
        if r["kind"] == "gate":
            ratio = "-" if r["pauc_ratio"] is None else f"{r['pauc_ratio']:.2f}"
            style = "-" if k == "gate_retry" else "-."
            ax.plot(f, 100 * np.asarray(r["fnmr"]), color="k", lw=2.2, ls=style, label=f"{k} ({ratio})")
    flat = "1.00" if res["false_non_matches"] else "-"
    ax.plot(f, 100 * np.asarray(res["random"]["fnmr"]), color="grey", lw=1.5, ls="--", label=f"random discard ({flat})")
    ideal = res["ideal"]["pauc_ratio"]
    ideal_text = "-" if ideal is None else f"{ideal:.2f}"
    ax.plot(f, 100 * np.asarray(res["ideal"]["fnmr"]), color="grey", lw=1.2, ls=":", label=f"ideal ({ideal_text})")
    ax.axvline(100 * res["pauc_upto"], color="grey", lw=0.5, ls=":")
    ax.set_xlim(0, f[-1])
    ax.set_ylim(0, max(100 * res["fnmr"] * 1.6, 1e-3))
    ax.set_xlabel("genuine comparisons discarded, lowest pairwise quality first (%)")
    ax.set_ylabel(f"FNMR at FMR {res['fmr']:g} (threshold {res['threshold']:.3f}, fixed) (%)")
    ax.set_title(
        f"EDC, {name}: {res['genuine_pairs']:,} genuine pairs, {res['false_non_matches']} misses"
        f" (legend: pAUC/random to {100 * res['pauc_upto']:g}% discarded)",
        fontsize=8,
    )
    ax.grid(True, alpha=0.25)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def calibrated_threshold(result: dict[str, Any], far: float) -> tuple[float, float]:
    """(threshold, TAR) at ``far`` from a result's pair scores."""
    gen, imp = result["_scores"]
    if not len(gen) or not len(imp):
        raise ValueError("no genuine or no impostor pairs: need at least two photos of a person and two people")
    if far * len(imp) < 1:
        raise ValueError(f"FAR {far:g} needs at least {math.ceil(1 / far):,} impostor pairs; this folder gives {len(imp):,}")
    tar, thr = tar_at_far(gen, imp, far)
    return thr, tar
