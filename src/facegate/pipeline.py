"""Wiring of detect -> align -> embed -> gallery -> rank for enrol, identify and verify.

Knows nothing of HTTP: takes decoded RGB arrays, returns dataclasses, raises domain errors.
Blocking and thread-safe: the API runs it in worker threads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial

import numpy as np

from . import cancel
from .vision.batching import MicroBatcher
from .config import Settings
from .vision.detect import BlazeFaceDetector, YuNetDetector
from .vision.embed import Embedder, FlipTTA, load_embedder
from .vision.liveness import NO_MODEL, Liveness, LivenessUnavailableError, PassiveLiveness, load_liveness
from .errors import ChallengeRequiredError, LooksLikeError, NoFaceError, PoorQualityError, ReembedError
from .gallery.sqlite import Gallery, NewFace, Person, clean_name
from .vision.imageio import ImageLimits, decode_image, encode_jpeg
from .vision.challenge import Limits as ChallengeLimits, Outcome, FrameReading, judge as judge_challenge, read as read_frame
from .vision.landmarks import FaceMesh
from .vision.locate import LocatedFace, Locator
from .vision.quality import QualityThresholds, Verdict, judge, norm_floor
from .rank import Decision, Neighbour, rank


#: JPEG quality of stored crops: re-embedding one gives a vector within cosine 0.996 of the original's.
CROP_QUALITY = 95

#: The decision given to a face too poor to name: nobody, similarity 0 (the answer's status is "retry").
RETRY = Decision(None, None, 0.0, 0, 0)


#: How often (seconds) Python's interpreter lock passes between busy threads in a server (default 0.005).
#: A thread coming back from C code that released the lock (a model call, a SQLite read, a decoded JPEG)
#: waits up to this long for a thread running Python to let go of it, its core meanwhile idle or on other
#: work. 32 clients, 6 runs each: 60.1 req/s at 5 ms, 60.8 at 1 ms, 61.4 at 0.5 ms, 61.6 at 0.2 ms, the
#: machine idle 2.8% -> 1.4% of the time (README, "Many requests at once").
SERVER_SWITCH_INTERVAL_S = 0.0002


def batch_scheduling() -> bool:
    """Put every thread of this process, and so every thread it starts later, under Linux's
    ``SCHED_BATCH`` policy; False where there is none (not Linux) or it is refused.

    Why: under load a request's small pieces of work (the event loop's parsing, a worker's decoding,
    locating and search) each woke up and preempted a model call at once, each starting on caches
    the model had just filled with its own data. Under ``SCHED_BATCH`` a waking thread waits for the
    running one's time slice to end instead: the model runs its slices out, and the small pieces run
    later, several together, on warmer caches. ``bench/load.py --clients 32``, three alternating pairs:
    84.0-85.0% of the model alone without, 86.0-90.5% with; CPU outside the model threads 4.6-5.2 ->
    4.1-4.7 ms a request (README, "Many requests at once"). An idle machine runs a waking thread at
    once either way: a lone request is not slowed. The policy needs no privilege and lowers no
    priority: the process only gives up preempting others (its own threads, or a camera client on the
    same box).
    """
    import os

    if not hasattr(os, "sched_setscheduler") or not hasattr(os, "SCHED_BATCH"):
        return False
    param = os.sched_param(0)
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    done = False
    for tid in tids:  # Linux applies a policy to one thread: the ones that already exist, each
        try:
            os.sched_setscheduler(tid, os.SCHED_BATCH, param)
            done = True
        except OSError:  # a thread that ended meanwhile, or a policy this kernel refuses
            pass
    return done


def server_thread_settings(batch: bool = True) -> None:
    """Thread settings of a server process: NumPy's BLAS and OpenCV on one thread each, a short
    interpreter switch interval (``SERVER_SWITCH_INTERVAL_S``), and with ``batch`` the
    ``SCHED_BATCH`` scheduling policy (``batch_scheduling``).

    A server's parallelism is its requests, on worker threads, and the model's own onnxruntime
    threads. BLAS and OpenCV pools on the same cores only spin-wait around tiny matrices and small
    crops: with them, locating a face in a /predict crop took 12-17 ms of CPU for 6-9 ms of wall
    time; without, 6.6 ms of CPU, the same wall time (README, "Many requests at once").
    """
    import sys

    import cv2
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")
    cv2.setNumThreads(1)
    sys.setswitchinterval(SERVER_SWITCH_INTERVAL_S)
    if batch:
        batch_scheduling()


@dataclass(frozen=True)
class Identification:
    located: LocatedFace
    decision: Decision
    threshold: float
    #: Set when the quality gate judged the face: ``verdict.ok`` False means "retry", and ``decision`` is unknown.
    verdict: Verdict | None = None
    #: Set with ``liveness = "passive"``: the passive check's answer; a spoof's ``decision`` is nobody.
    liveness: Liveness | None = None
    #: With ``liveness = "challenge"``: "required" (no challenge answered: named nobody), "failed" or "passed".
    challenge: str | None = None

    @property
    def retry(self) -> bool:
        """Too poor a face to name: the caller should send another frame rather than trust a guess."""
        return self.verdict is not None and not self.verdict.ok

    @property
    def spoof(self) -> bool:
        """The passive liveness check judged the face a presentation attack (a print, a screen): never named."""
        return self.liveness is not None and not self.liveness.live

    @property
    def status(self) -> str:
        """The one word every answer carries: "recognized", "unknown", "retry" (too poor a face to name),
        or "spoof" (judged a print or a screen by the passive liveness check, whatever its quality)."""
        if self.spoof:
            return "spoof"
        if self.retry:
            return "retry"
        if self.challenge in ("required", "failed"):
            return f"challenge_{self.challenge}"
        return "recognized" if self.decision.known else "unknown"


@dataclass(frozen=True)
class ChallengeAnswer:
    """A re-checked challenge: the verdict, each frame's readings (neutral frames first, then the actions'
    in the challenge's order), and the first neutral frame's face (named only when the challenge passed)."""

    outcome: Outcome
    readings: tuple[FrameReading, ...]
    faces: tuple[Identification, ...]
    #: The first frame's face vector when the challenge passed (what an enrolment must match).
    vector: np.ndarray | None = None


@dataclass(frozen=True)
class Dropped:
    """A photo left out of an enrolment and why, in words its sender can act on."""

    field: str
    #: "no_face" or "poor_quality".
    code: str
    reasons: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"field": self.field, "code": self.code, "reasons": list(self.reasons)}


@dataclass(frozen=True)
class Enrolment:
    """A stored enrolment: the person as stored, and the photos left out."""

    person: Person
    dropped: tuple[Dropped, ...] = ()


@dataclass(frozen=True)
class Verification:
    similarity: float
    same_person: bool
    threshold: float


class Pipeline:
    """One per process: holds the detector, the embedder (with flip TTA) and the gallery."""

    def __init__(
        self,
        settings: Settings,
        detector: BlazeFaceDetector,
        embedder: FlipTTA,
        gallery: Gallery,
        batcher: MicroBatcher | None = None,
        yunet: YuNetDetector | None = None,
        liveness: PassiveLiveness | None = None,
        landmarks: FaceMesh | None = None,
    ) -> None:
        self.settings = settings
        self.detector = detector
        #: YuNet: alignment landmarks (settings.landmarks == "yunet") and the fallback detector.
        self.yunet = yunet
        #: The imported liveness models (``facegate models import-liveness``), or None: /v1/liveness and ``liveness = "passive"``.
        self.liveness = liveness
        #: The face mesh of the ``mediapipe`` wheel: the active challenge's re-check (``challenge_frames``).
        self.landmarks = landmarks
        self.challenge_limits = ChallengeLimits(settings.challenge_closed_ear, settings.challenge_blink_ratio, settings.challenge_turn_yaw)
        self.embedder = embedder
        self.gallery = gallery
        #: The "where is the face" decision (``vision.locate``).
        self.locator = Locator(detector, yunet, settings.landmarks, settings.fallback_detector, settings.illumination)
        #: When set, every embedding goes through it (one model call for many concurrent requests).
        self.batcher = batcher
        self.threshold = settings.threshold if settings.threshold is not None else embedder.default_threshold
        self.limits = ImageLimits(max_pixels=settings.max_image_pixels, min_side=settings.min_image_side)
        s = settings
        self.enroll_limits = QualityThresholds(
            min_face_px=s.enroll_min_face_px,
            min_sharpness=s.enroll_min_sharpness,
            min_brightness=s.enroll_min_brightness,
            max_brightness=s.enroll_max_brightness,
            max_yaw=s.enroll_max_yaw,
            min_feature_norm=norm_floor(embedder.name, s.enroll_min_feature_norm, 0),
        )
        self.retry_limits = QualityThresholds(
            min_face_px=s.retry_min_face_px,
            min_sharpness=s.retry_min_sharpness,
            min_brightness=s.retry_min_brightness,
            min_feature_norm=norm_floor(embedder.name, s.retry_min_feature_norm, 1),
        )

    @classmethod
    def from_settings(cls, settings: Settings, *, batching: bool = False) -> Pipeline:
        """Load the models and open the gallery (no network access; the models ship in packages).

        ``batching``: run the model in ``inference_threads`` threads fed by one bounded queue (the server);
        otherwise embed in the calling thread (the CLI, evaluation). The server's process also gets
        its thread settings (``server_thread_settings``).
        """
        if batching:
            server_thread_settings(settings.batch_scheduling)
        # Loaded whenever imported (POST /v1/liveness); with liveness = "passive" a server will not start without one.
        passive = settings.passive_liveness
        liveness = load_liveness(settings.models_dir, required=passive)
        if liveness is None and passive:
            raise LivenessUnavailableError(f"liveness = {settings.liveness!r}: {NO_MODEL}")
        embedder = FlipTTA(
            load_embedder(settings.model, threads=settings.inference_threads, models_dir=settings.models_dir, lane=batching, precision=settings.precision),
            settings.tta,
        )
        detector = BlazeFaceDetector(
            settings.detector,
            settings.det_threshold,
            pool_size=settings.worker_threads if batching else 1,
            max_side=settings.max_detect_side,
        )
        from .gallery.backends import open_gallery

        gallery = open_gallery(settings, embedder.model_id, embedder.dim)
        needs_yunet = settings.landmarks == "yunet" or settings.fallback_detector == "yunet"
        yunet = YuNetDetector() if needs_yunet else None
        batcher = (
            MicroBatcher(
                embedder.embed_with_norm,
                lane_fn=partial(embedder.embed_with_norm, lane=True),
                max_batch=settings.max_batch,
                max_queue=settings.embed_queue,
                max_wait_s=settings.batch_wait_ms / 1000.0,
                workers=settings.inference_threads,
            )
            if batching
            else None
        )
        return cls(settings, detector, embedder, gallery, batcher, yunet, liveness, FaceMesh())

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        self.gallery.close()
        self.detector.close()
        if self.landmarks is not None:
            self.landmarks.close()

    # ------------------------------------------------------------------ faces
    def locate(self, image: np.ndarray, eyes: np.ndarray | None = None, *, field: str = "image", crop: bool = False) -> LocatedFace:
        """The one face an image (a photo or a client's face crop) is about, aligned (``Locator.locate``)."""
        cancel.check("locate")  # each stage first checks the request's deadline (``cancel``): no work for no one
        return self.locator.locate(image, eyes, field=field, crop=crop)

    def embed(self, aligned: Sequence[np.ndarray]) -> np.ndarray:
        return self.embed_with_norm(aligned)[0]

    def embed_with_norm(self, aligned: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Unit vectors and feature norms (a quality signal for AdaFace)."""
        if not len(aligned):
            return np.zeros((0, self.embedder.dim), np.float32), np.zeros((0,), np.float32)
        cancel.check("embed")
        batch = np.stack(aligned)
        if self.batcher is not None:
            return self.batcher(batch, cancel.remaining(self.settings.request_timeout_s))
        return self.embedder.embed_with_norm(batch)

    # ------------------------------------------------------------------ quality
    def judge_enroll(self, lf: LocatedFace) -> Verdict:
        """The enrolment gate: a stored face is compared with every later probe, so it must be good."""
        return judge(lf.quality, self.enroll_limits) if self.settings.quality_gate else Verdict(lf.quality, ())

    def judge_probe(self, lf: LocatedFace) -> Verdict:
        """The identify floor: below it a name would be a guess, so the answer is "retry"."""
        return judge(lf.quality, self.retry_limits) if self.settings.quality_gate else Verdict(lf.quality, ())

    def check_enrollable(self, image: np.ndarray, *, field: str = "image") -> LocatedFace:
        """Locate the face and apply the enrolment gate; raises NoFaceError or PoorQualityError (with reasons)."""
        lf = self.locate(image, field=field)
        self._refuse_if_poor(lf, field)
        return lf

    def _refuse_if_poor(self, lf: LocatedFace, field: str) -> None:
        verdict = self.judge_enroll(lf)
        if not verdict.ok:
            raise PoorQualityError(f"{field}: face too poor to enrol: {'; '.join(verdict.reasons)}", field=field, reasons=verdict.reasons)

    # ------------------------------------------------------------------ use cases
    def _screen(self, images: Sequence[np.ndarray], fields: Sequence[str]) -> tuple[list[tuple[LocatedFace, np.ndarray, str]], list[Dropped]]:
        """Each photo located, judged and embedded: (the faces that pass, with their vectors; the photos left out)."""
        located: list[tuple[int, LocatedFace, str]] = []
        dropped: list[tuple[int, Dropped]] = []
        for i, (img, f) in enumerate(zip(images, fields)):
            try:
                lf = self.locate(img, field=f)
            except NoFaceError as exc:
                dropped.append((i, Dropped(f, exc.code, (exc.message.removeprefix(f"{f}: "),))))
                continue
            verdict = self.judge_enroll(lf)
            if verdict.ok:
                located.append((i, lf, f))
            else:
                dropped.append((i, Dropped(f, PoorQualityError.code, verdict.reasons)))
        vecs, norms = self.embed_with_norm([lf.aligned for _, lf, _ in located])
        kept: list[tuple[LocatedFace, np.ndarray, str]] = []
        for (i, lf, f), vec, n in zip(located, vecs, norms):
            lf = replace(lf, quality=replace(lf.quality, feature_norm=float(n)))
            verdict = self.judge_enroll(lf)  # the feature norm is known only now
            if verdict.ok:
                kept.append((lf, vec, f))
            else:
                dropped.append((i, Dropped(f, PoorQualityError.code, verdict.reasons)))
        return kept, [d for _, d in sorted(dropped, key=lambda t: t[0])]

    def _require(self, kept: list, dropped: list[Dropped], need: int) -> None:
        """Refuse (nothing stored) when fewer than ``need`` photos pass; the error lists every photo left out."""
        if len(kept) >= need:
            return
        listed = {"dropped": [d.to_dict() for d in dropped]}
        if not kept and len(dropped) == 1:  # one photo, one reason: said as it always was
            d = dropped[0]
            if d.code == NoFaceError.code:
                raise NoFaceError(f"{d.field}: {d.reasons[0]}", field=d.field, details=listed)
            raise PoorQualityError(f"{d.field}: face too poor to enrol: {'; '.join(d.reasons)}", field=d.field, reasons=d.reasons, details=listed)
        said = "; ".join(f"{d.field}: {'; '.join(d.reasons)}" for d in dropped)
        message = f"{len(kept)} of {len(kept) + len(dropped)} photos usable, {need} needed: {said}"
        first = dropped[0] if dropped else None
        reasons = tuple(r for d in dropped for r in d.reasons)
        if dropped and all(d.code == NoFaceError.code for d in dropped) and not kept:
            raise NoFaceError(message, field=first.field, details=listed)
        raise PoorQualityError(message, field=first.field if first else None, reasons=reasons, details=listed)

    def _refuse_duplicates(self, vecs: Sequence[np.ndarray], fields: Sequence[str], person_id: int | None, allow: bool | None) -> None:
        """One person, one name: faces that match someone else above the threshold (better than the person
        they are added to) are refused with that person's name, unless duplicates are allowed."""
        if allow if allow is not None else self.settings.allow_duplicates:
            return
        worst: tuple[Neighbour, str] | None = None
        for vec, f in zip(vecs, fields):
            cancel.check("search")
            best: dict[int, Neighbour] = {}
            for n in self.gallery.search(vec, max(self.settings.top_k, 5)):
                if n.person_id not in best or n.similarity > best[n.person_id].similarity:
                    best[n.person_id] = n
            own = best.pop(person_id).similarity if person_id in best else -1.0
            other = max(best.values(), key=lambda n: n.similarity, default=None)
            if other is not None and other.similarity >= self.threshold and other.similarity > own:
                if worst is None or other.similarity > worst[0].similarity:
                    worst = (other, f)
        if worst is not None:
            n, f = worst
            raise LooksLikeError(
                f"{f}: this face looks like {n.name} (person {n.person_id}, similarity {n.similarity:.3f}); "
                "send allow_duplicate to enrol it anyway",
                person_id=n.person_id,
                name=n.name,
                similarity=n.similarity,
                field=f,
            )

    def _new_faces(self, kept: list[tuple[LocatedFace, np.ndarray, str]]) -> list[NewFace]:
        keep = self.settings.keep_crops
        return [NewFace(v, encode_jpeg(lf.aligned, CROP_QUALITY) if keep else None, f) for lf, v, f in kept]

    def enroll_photos(
        self,
        name: str,
        images: Sequence[np.ndarray],
        fields: Sequence[str] | None = None,
        *,
        allow_duplicate: bool | None = None,
        live_face: np.ndarray | None = None,
    ) -> Enrolment:
        """Enrol a new person from the photos that pass the gate (at least ``enroll_min_faces``; below that
        nothing is stored); the others are left out and listed. Faces of someone already enrolled: 409.
        ``live_face``: the vector of a passed liveness challenge's face, which every kept photo must match."""
        fields = list(fields or [f"images[{i}]" for i in range(len(images))])
        name = clean_name(name, self.settings.max_name_length)  # cheap checks before any model runs
        self.gallery.ensure_name_free(name)
        kept, dropped = self._screen(images, fields)
        self._require(kept, dropped, self.settings.enroll_min_faces)
        if live_face is not None:
            for _, v, f in kept:
                sim = float(v @ live_face)
                if sim < self.threshold:
                    raise ChallengeRequiredError(
                        f"{f}: not the face that passed the challenge (similarity {sim:.2f}, at least {self.threshold:.2f} needed)", field=f
                    )
        self._refuse_duplicates([v for _, v, _ in kept], [f for _, _, f in kept], None, allow_duplicate)
        cancel.check("store")  # a request that timed out stores nothing
        person = self.gallery.add_person(name, self._new_faces(kept), self.embedder.model_id, self.settings.max_name_length)
        return Enrolment(person, tuple(dropped))

    def add_photos(
        self, person_id: int, images: Sequence[np.ndarray], fields: Sequence[str] | None = None, *, allow_duplicate: bool | None = None
    ) -> Enrolment:
        """Add the photos that pass the gate (at least one) to an enrolled person; the others are listed."""
        self.gallery.get_person(person_id)  # 404 before spending model time
        fields = list(fields or [f"images[{i}]" for i in range(len(images))])
        kept, dropped = self._screen(images, fields)
        self._require(kept, dropped, 1)
        self._refuse_duplicates([v for _, v, _ in kept], [f for _, _, f in kept], person_id, allow_duplicate)
        cancel.check("store")
        return Enrolment(self.gallery.add_faces(person_id, self._new_faces(kept), self.embedder.model_id), tuple(dropped))

    def enroll(self, name: str, images: Sequence[np.ndarray], fields: Sequence[str] | None = None, **kw) -> Person:
        """``enroll_photos``'s person."""
        return self.enroll_photos(name, images, fields, **kw).person

    def add_faces(self, person_id: int, images: Sequence[np.ndarray], fields: Sequence[str] | None = None, **kw) -> Person:
        """``add_photos``'s person."""
        return self.add_photos(person_id, images, fields, **kw).person

    def decide(self, embedding: np.ndarray) -> Decision:
        cancel.check("search")
        return rank(self.gallery.search(embedding, self.settings.top_k), self.threshold, self.settings.top_k)

    def identify_face(self, image: np.ndarray, eyes: np.ndarray | None = None, *, field: str = "image", crop: bool = False) -> Identification:
        """Who is the one face in this image (the reference ``/predict``: a client's face crop, ``crop=True``)."""
        lf = self.locate(image, eyes, field=field, crop=crop)
        return self._passive(image, self.identify_located([lf]))[0]

    def identify_located(self, located: Sequence[LocatedFace]) -> list[Identification]:
        """Identities of faces already located (a photo's, a camera frame's), liveness aside. Faces below
        the quality floor get "retry" (decision unknown, similarity 0): those whose crop already shows it
        are not even embedded; the others are judged again with their feature norm."""
        verdicts = [self.judge_probe(lf) for lf in located]
        good = [lf for lf, v in zip(located, verdicts) if v.ok]
        vecs, norms = self.embed_with_norm([lf.aligned for lf in good])
        out: list[Identification] = []
        it = iter(zip(vecs, norms))
        for lf, v in zip(located, verdicts):
            if not v.ok:
                out.append(Identification(lf, RETRY, self.threshold, v))
                continue
            vec, norm = next(it)
            lf = replace(lf, quality=replace(lf.quality, feature_norm=float(norm)))
            v = self.judge_probe(lf)
            if not v.ok:
                out.append(Identification(lf, RETRY, self.threshold, v))
                continue
            out.append(Identification(lf, self.decide(vec), self.threshold, v))
        return out

    def identify_all(self, image: np.ndarray) -> list[Identification]:
        """Every face in a photo, each with its identity (or "retry" when too poor to name)."""
        cancel.check("locate")
        return self._passive(image, self.identify_located(self.locator.faces(image)))

    # ------------------------------------------------------------------ liveness
    def passive_check(self, image: np.ndarray, located: Sequence[LocatedFace]) -> list[Liveness]:
        """The passive liveness check of each located face in ``image`` (RGB), on the box that located it
        (BlazeFace's, YuNet's for a face only YuNet found; the whole image for a face aligned on a
        client's eyes alone). ``LivenessUnavailableError`` (503) without an imported liveness model."""
        if self.liveness is None:
            raise LivenessUnavailableError(NO_MODEL)
        return self.liveness.check_many(image, [lf.box for lf in located])

    def _passive(self, image: np.ndarray, idents: list[Identification]) -> list[Identification]:
        """With ``liveness = "passive"``: each face carries its check, and a face judged spoof is named nobody.
        With ``"challenge"`` (or ``"both"``), no face is named here: only an answered challenge names."""
        if self.settings.challenge_liveness:
            idents = [replace(i, decision=RETRY, challenge="required") for i in idents]
        if not self.settings.passive_liveness or not idents:
            return idents
        checks = self.passive_check(image, [i.located for i in idents])
        return [replace(i, liveness=c, decision=i.decision if c.live else RETRY) for i, c in zip(idents, checks)]

    # ------------------------------------------------------------------ active challenge
    def challenge_frames(
        self, actions: Sequence[str], neutral: Sequence[np.ndarray], acted: dict[str, np.ndarray]
    ) -> ChallengeAnswer:
        """Re-check a challenge's frames (``vision.challenge``): each action shown, one face throughout; then
        who the first neutral frame's face is, named only when the challenge passed (and, with
        ``liveness = "both"``, the passive check calls it live)."""
        if self.landmarks is None:
            raise LivenessUnavailableError("the face landmark model is not loaded")
        frames = list(neutral) + [acted[a] for a in actions if a in acted]
        located: list[LocatedFace | None] = []
        readings: list[FrameReading] = []
        for img in frames:
            try:
                lf = self.locate(img)
            except NoFaceError:
                lf = None
            located.append(lf)
            mesh = self.landmarks.find(img, near=lf.box if lf is not None else None) if lf is not None else None
            readings.append(read_frame(mesh))
        found = [lf for lf in located if lf is not None]
        vecs, norms = self.embed_with_norm([lf.aligned for lf in found])
        it = iter(zip(vecs, norms))
        per = [next(it) if lf is not None else None for lf in located]
        first = per[0]
        sims = [None if p is None or first is None else float(first[0] @ p[0]) for p in per[1:]]
        n = len(neutral)
        acted_readings = dict(zip([a for a in actions if a in acted], readings[n:]))
        labels = [f"neutral[{i}]" for i in range(n)] + [f"frames.{a}" for a in acted_readings]
        outcome = judge_challenge(actions, readings[:n], acted_readings, sims, self.threshold, self.challenge_limits, labels)
        idents: list[Identification] = []
        lf0 = located[0]
        if lf0 is not None and first is not None:
            lf0 = replace(lf0, quality=replace(lf0.quality, feature_norm=float(first[1])))
            v = self.judge_probe(lf0)
            decision = self.decide(first[0]) if v.ok and outcome.passed else RETRY
            ident = Identification(lf0, decision, self.threshold, v, challenge="passed" if outcome.passed else "failed")
            if self.settings.passive_liveness and self.liveness is not None:
                c = self.passive_check(neutral[0], [lf0])[0]
                ident = replace(ident, liveness=c, decision=ident.decision if c.live else RETRY)
            idents.append(ident)
        live = first is not None and outcome.passed and not (idents and idents[0].spoof)
        return ChallengeAnswer(outcome, tuple(readings), tuple(idents), first[0] if live else None)

    def verify(self, a: np.ndarray, b: np.ndarray) -> Verification:
        la, lb = self.locate(a, field="image_a"), self.locate(b, field="image_b")
        va, vb = self.embed([la.aligned, lb.aligned])
        sim = float(va @ vb)
        return Verification(sim, sim >= self.threshold, self.threshold)


def reembed_gallery(
    gallery: Gallery,
    embedder: Embedder,
    *,
    batch: int = 64,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Re-compute every stored face with ``embedder`` from its kept crop; all or nothing. Returns the face count."""
    rows = gallery.stored_crops()
    missing = [fid for fid, crop in rows if crop is None]
    if missing:
        raise ReembedError(
            f"{len(missing)} of {len(rows)} faces have no stored crop (enrolled with keep_crops off); "
            "they cannot be re-embedded: re-enrol those people or keep the current model"
        )
    limits = ImageLimits(min_side=1)
    vectors: dict[int, np.ndarray] = {}
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        crops = [decode_image(crop, limits, field=f"face {fid}") for fid, crop in chunk]
        for (fid, _), v in zip(chunk, embedder.embed(np.stack(crops))):
            vectors[fid] = v
        if progress:
            progress(len(chunk))
    gallery.reembed(embedder.model_id, embedder.dim, vectors)
    return len(rows)
