"""``facegate client``: an edge client for kiosks and scripts, like the reference Android app.

BlazeFace runs here, on the client's frames (camera, video file or photos); the main face's crop
(25% margin) and its eye points go to ``/predict`` in the reference JSON (``facegate.clients.http``), at
most once per interval counted from the previous answer, so the server never sees more than one
request per interval from a client. A server that restarts is waited for; a 503 is retried after its
``Retry-After``. ``facegate client register NAME`` takes 3 frames with a face and calls ``/register``.

With a server whose ``liveness`` is ``challenge`` or ``both`` (its ``/healthz`` says), each identification
is an active liveness challenge instead (``--challenge`` forces it, ``--no-challenge`` never): the
client asks ``POST /v1/challenges``, prints each action ("Blink", "Turn your head to your left"), follows
the face with the landmark model of the ``mediapipe`` wheel (``vision.landmarks``, the server's own), takes
the frame where the action shows, and sends the frames to ``/v1/challenges/{id}/answer``.
"""

from __future__ import annotations

import email.utils
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import httpx
import numpy as np
import typer
from rich.console import Console
from rich.markup import escape

DEFAULT_SERVER = "http://127.0.0.1:8000"
MAX_BACKOFF_S = 5.0


class ClientError(Exception):
    """The server refused a request for a reason retrying will not fix (4xx), or could not be reached at all (status 0)."""

    def __init__(self, status: int, detail: str, field: str | None = None) -> None:
        super().__init__(f"{status}: {detail}")
        self.status, self.detail, self.field = status, detail, field


class AuthError(ClientError):
    """401/403: no key, a wrong key, or a key whose role does not allow the call."""


def retry_after_seconds(value: str | None, default: float = 1.0) -> float:
    """``Retry-After`` as seconds: a number, or an HTTP date (RFC 9110); ``default`` when absent or unreadable."""
    if not value:
        return default
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return default


def _error_of(r: httpx.Response) -> tuple[str, str | None]:
    try:
        body = r.json()
    except ValueError:
        return r.text or r.reason_phrase, None
    detail = body.get("detail", r.reason_phrase) if isinstance(body, dict) else r.reason_phrase
    return (detail if isinstance(detail, str) else json.dumps(detail)), (body.get("field") if isinstance(body, dict) else None)


@dataclass
class Outcome:
    """What one attempt came to: an answer, or why there is none (``waited`` says for how long we now hold off)."""

    result: dict | None = None
    error: str | None = None
    status: int | None = None
    unreachable: bool = False
    reconnected: bool = False


class Throttled:
    """The HTTP side of the client: bearer key, one request at a time, throttle, Retry-After and backoff.

    ``ready()`` says whether a request may go now. After any answer the next request waits
    ``interval`` seconds (longer after a 503 with a longer ``Retry-After``); after a connection
    failure it waits 0.5, 1, 2 ... up to 5 s, so a restarting server is not hammered.
    """

    def __init__(
        self,
        server: str,
        api_key: str | None = None,
        interval: float = 0.5,
        timeout: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=server.rstrip("/"), headers=headers, timeout=timeout)
        self.interval = interval
        self.clock = clock
        self.next_at = 0.0
        self.failures = 0
        self.sent = 0

    def ready(self) -> bool:
        return self.clock() >= self.next_at

    def wait_ready(self) -> None:
        delay = self.next_at - self.clock()
        if delay > 0:
            time.sleep(delay)

    def post(self, path: str, payload: dict) -> Outcome:
        """One attempt. 4xx raises ``ClientError`` (``AuthError`` for 401/403); the rest is an Outcome."""
        was_down = self.failures > 0
        self.sent += 1
        try:
            r = self.http.post(path, json=payload)
        except httpx.TransportError as exc:  # refused, reset, timed out: the server is down or restarting
            self.failures += 1
            self.next_at = self.clock() + min(MAX_BACKOFF_S, 0.5 * 2 ** (self.failures - 1))
            return Outcome(error=f"server unreachable ({type(exc).__name__}); retrying", unreachable=True)
        self.failures = 0
        wait = self.interval
        try:
            if r.status_code == 503:
                wait = max(wait, retry_after_seconds(r.headers.get("retry-after")))
                return Outcome(error=f"server busy: {_error_of(r)[0]}", status=503, reconnected=was_down)
            if r.status_code in (401, 403):
                raise AuthError(r.status_code, *_error_of(r))
            if r.status_code == 429:  # rate-limited: same as busy
                wait = max(wait, retry_after_seconds(r.headers.get("retry-after")))
                return Outcome(error=f"rate-limited: {_error_of(r)[0]}", status=429, reconnected=was_down)
            if r.status_code >= 500:
                return Outcome(error=f"server error {r.status_code}: {_error_of(r)[0]}", status=r.status_code, reconnected=was_down)
            if r.status_code >= 400:
                raise ClientError(r.status_code, *_error_of(r))
            return Outcome(result=r.json(), status=r.status_code, reconnected=was_down)
        finally:
            self.next_at = self.clock() + wait

    def close(self) -> None:
        self.http.close()


# ----------------------------------------------------------------------------------- frames
def _bgr_to_rgb(frame: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(frame[:, :, ::-1])


def frames(camera: int | None = None, video: Path | None = None, realtime: bool = True) -> Iterator[tuple[int, np.ndarray]]:
    """(frame index, RGB frame) from a camera or a video file. A file is played at its own frame
    rate when ``realtime`` (frames that are late are skipped, as a camera would drop them)."""
    import cv2

    cap = cv2.VideoCapture(camera if camera is not None else str(video))
    if not cap.isOpened():
        raise typer.BadParameter(f"cannot open {'camera ' + str(camera) if camera is not None else video}")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    fps = fps if 1.0 <= fps <= 240.0 else 25.0
    start = time.monotonic()
    index = -1
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                return
            index += 1
            if video is not None and realtime:
                due = start + index / fps
                now = time.monotonic()
                if now < due:
                    time.sleep(due - now)
                elif now - due > 1.0 / fps:
                    continue  # late: drop it
            yield index, _bgr_to_rgb(frame)
    finally:
        cap.release()


# ----------------------------------------------------------------------------------- output
class Reporter:
    """Human lines (rich) or JSON lines on stdout (``--json``), one per event."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.console = Console(highlight=False, soft_wrap=True)  # a terminal wraps; a log or a pipe keeps whole lines
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)

    def event(self, kind: str, text: str, **fields: Any) -> None:
        if self.as_json:
            sys.stdout.write(json.dumps({"event": kind, "time": round(time.time(), 3), **fields}) + "\n")
            sys.stdout.flush()
        else:
            (self.err if kind in ("error", "unreachable") else self.console).print(text)

    def result(self, source: str, r: dict) -> None:
        name = r.get("user_name", "?")
        sim = r.get("similarity", 0.0)
        status = r.get("status")
        if status == "recognized":
            said = f"[bold green]{escape(name)}[/] ({sim:.2f})"
        elif status == "retry":
            said = "[bold yellow]retry[/] (too poor a face to name: " + escape("; ".join((r.get("quality") or {}).get("reasons") or [])) + ")"
        else:
            said = f"[bold red]unknown[/] (nearest {sim:.2f})"
        text = f"{escape(source)}: " + said
        self.event("result", text, source=source, **r)


PROMPTS = {"blink": "Blink", "turn_left": "Turn your head to your left", "turn_right": "Turn your head to your right"}


def server_wants_challenge(http: Throttled) -> bool:
    """Whether the server names faces only through a challenge (``/healthz``'s ``liveness``)."""
    try:
        return http.http.get("/healthz").json().get("liveness") in ("challenge", "both")
    except (httpx.HTTPError, ValueError, AttributeError):
        return False


def run_challenge(http: Throttled, stream: Iterator[tuple[int, np.ndarray]], mesh, out: Reporter, detector=None) -> Outcome:
    """One challenge on the stream's frames: the frames are picked here with the server's own
    measurements and limits (``vision.challenge``), and judged again by the server."""
    import math

    from .http import b64_jpeg
    from facegate.vision.challenge import Limits, read

    lim = Limits()
    got = http.post("/v1/challenges", {})
    if got.result is None:
        return got
    ch = got.result
    deadline = time.monotonic() + float(ch["expires_in_s"]) - 1.0  # the answer must be in before it expires
    actions: list[str] = ch["actions"]

    def reading(frame: np.ndarray):
        r = read(mesh.find(frame))
        return r if r.found and r.pose is not None and math.isfinite(r.pose.yaw) else None

    def until(pred, seconds: float):
        """The first frame whose reading meets ``pred`` within ``seconds`` (else the last one seen with a face)."""
        end = min(deadline, time.monotonic() + seconds)
        last = None
        for _, frame in stream:
            r = reading(frame)
            if r is not None:
                last = (frame, r)
                if pred(r):
                    return last
            if time.monotonic() >= end:
                break
        return last

    out.event("challenge", "Look at the camera", step="neutral", actions=actions)
    first = until(lambda r: abs(r.pose.yaw) < lim.turn_yaw / 2, 1.5)
    if first is None:
        return Outcome(error="no face in view for the challenge")
    base = first[1]
    frames: dict[str, str] = {}
    for i, action in enumerate(actions):
        out.event("challenge", f"[bold]{PROMPTS[action]}[/]", step=action)
        left = max(0.5, (deadline - time.monotonic() - 0.8) / (len(actions) - i))
        if action == "blink":
            pred = lambda r: r.ear < lim.closed_ear and r.ear <= lim.blink_ratio * base.ear  # noqa: E731
        else:
            sign = -1.0 if action == "turn_left" else 1.0  # yaw < 0: the person's own left (frames as the camera took them)
            pred = lambda r, sign=sign: sign * (r.pose.yaw - base.pose.yaw) >= lim.turn_yaw + 3 and sign * r.pose.yaw >= lim.turn_yaw + 3  # noqa: E731
        taken = until(pred, left)
        if taken is not None:
            frames[action] = b64_jpeg(taken[0])
    out.event("challenge", "Look at the camera", step="neutral")
    back = until(lambda r: abs(r.pose.yaw) < lim.turn_yaw / 2 and r.ear > 0.8 * base.ear, max(0.3, deadline - time.monotonic()))
    neutral = [b64_jpeg(first[0])] + ([b64_jpeg(back[0])] if back is not None else [])
    return http.post(f"/v1/challenges/{ch['id']}/answer", {"neutral": neutral, "frames": frames})


def challenge_stream(http: Throttled, stream: Iterator[tuple[int, np.ndarray]], out: Reporter, max_seconds: float = 0.0, rounds: int = 0) -> int:
    """Challenges one after another on the stream (one per interval at most). Returns answers received."""
    from facegate.vision.landmarks import FaceMesh

    mesh = FaceMesh()
    answers = 0
    t0 = time.monotonic()
    try:
        while not (max_seconds and time.monotonic() - t0 > max_seconds) and not (rounds and answers >= rounds):
            http.wait_ready()
            try:
                outcome = run_challenge(http, stream, mesh, out)
            except ClientError as exc:  # e.g. 410: it expired before the frames were in
                if isinstance(exc, AuthError):
                    raise
                out.event("error", f"[yellow]challenge refused ({exc.status}): {escape(exc.detail)}[/]", status=exc.status, detail=exc.detail)
                continue
            except StopIteration:
                break
            if outcome.result is None:
                _handle(outcome, "challenge", out)
                if outcome.error == "no face in view for the challenge" and not outcome.unreachable:
                    break  # the source ended
                continue
            answers += 1
            r = outcome.result
            c = r["challenge"]
            face = (r.get("faces") or [{}])[0]
            if c["passed"]:
                said = f"[bold green]{escape(face.get('name') or 'unknown')}[/] (challenge passed)" if face.get("name") else f"[bold red]{face.get('status', 'no face')}[/] (challenge passed)"
            else:
                said = "[bold red]challenge failed[/]: " + escape("; ".join(c["reasons"]))
            out.event("challenge_result", said, **r)
    finally:
        mesh.close()
    return answers


def _handle(outcome: Outcome, source: str, out: Reporter) -> None:
    if outcome.reconnected:
        out.event("reconnected", "[cyan]server is back[/]")
    if outcome.result is not None:
        out.result(source, outcome.result)
    elif outcome.unreachable:
        out.event("unreachable", f"[yellow]{escape(outcome.error or '')}[/]", detail=outcome.error)
    elif outcome.error:
        out.event("error", f"[yellow]{escape(outcome.error)}[/]", status=outcome.status, detail=outcome.error)


def recognize_stream(
    detector, http: Throttled, stream: Iterator[tuple[int, np.ndarray]], out: Reporter, margin: float = 0.25, max_seconds: float = 0.0
) -> int:
    """Names the main face of the stream's frames, one request per interval at most. Returns answers received."""
    from .http import predict_payload
    from facegate.vision.detect import pick_main_face

    answers = 0
    t0 = time.monotonic()
    for index, frame in stream:
        if max_seconds and time.monotonic() - t0 > max_seconds:
            break
        if not http.ready():
            continue  # BlazeFace runs only when a face could be sent: no work for frames that would be dropped
        face = pick_main_face(detector.detect(frame), frame.shape)
        if face is None:
            continue
        outcome = http.post("/predict", predict_payload(frame, face, file_name=f"frame-{index}.jpg", margin=margin))
        answers += outcome.result is not None
        _handle(outcome, f"frame {index}", out)
    return answers


def recognize_images(
    detector, http: Throttled, paths: list[Path], out: Reporter, margin: float = 0.25, give_up_after: int = 8
) -> int:
    """Names every face of each photo (same throttle: one request per interval). A server that stays
    unreachable for ``give_up_after`` attempts in a row (about 25 s of backoff) ends the run: a script must not hang."""
    from .http import predict_payload
    from facegate.vision.imageio import decode_image

    answers = 0
    for path in paths:
        try:
            image = decode_image(path.read_bytes())
        except Exception as exc:  # noqa: BLE001 - a bad file is reported, the others go on
            out.event("error", f"[red]{escape(str(path))}: {escape(str(exc))}[/]", source=str(path), detail=str(exc))
            continue
        faces = detector.detect(image)
        if not faces:
            out.event("no_face", f"{escape(str(path))}: no face found", source=str(path))
        for i, face in enumerate(faces):
            while True:
                http.wait_ready()
                outcome = http.post("/predict", predict_payload(image, face, file_name=path.name, margin=margin))
                _handle(outcome, f"{path.name} face {i + 1}", out)
                if outcome.result is not None:
                    answers += 1
                    break
                if http.failures >= give_up_after:
                    raise ClientError(0, f"the server at {http.http.base_url} cannot be reached; gave up after {http.failures} attempts")
    return answers


def capture_for_register(
    detector, stream: Iterator[tuple[int, np.ndarray]], out: Reporter, gap: float = 1.0, margin: float = 0.5, min_face: float = 0.12
) -> list[np.ndarray]:
    """Three crops of the main face (``margin`` around it), at least ``gap`` seconds apart, with a countdown."""
    from .http import crop_face
    from facegate.vision.detect import pick_main_face

    shots: list[np.ndarray] = []
    next_at = time.monotonic() + gap
    announced = -1
    for _, frame in stream:
        remaining = next_at - time.monotonic()
        if remaining > 0:
            if int(remaining) + 1 != announced and remaining > 0.05:
                announced = int(remaining) + 1
                out.event("countdown", f"photo {len(shots) + 1} of 3 in {announced}…", photo=len(shots) + 1, seconds=announced)
            continue
        face = pick_main_face(detector.detect(frame), frame.shape)
        if face is None or face.width < min_face * min(frame.shape[:2]):
            continue  # no usable face yet: keep looking
        shots.append(crop_face(frame, face, margin)[0])
        out.event("captured", f"[green]photo {len(shots)} of 3 taken[/]", photo=len(shots))
        if len(shots) == 3:
            return shots
        next_at = time.monotonic() + gap
        announced = -1
    raise typer.BadParameter(f"the source ended after {len(shots)} usable frame(s) with a face; 3 are needed")


def register(http: Throttled, name: str, shots: list[np.ndarray], out: Reporter, attempts: int = 10) -> dict:
    """``POST /register``, waiting out a restart or a 503 (at most ``attempts`` tries)."""
    from .http import register_payload

    payload = register_payload(name, shots)
    for _ in range(attempts):
        http.wait_ready()
        outcome = http.post("/register", payload)
        if outcome.result is not None:
            return outcome.result
        _handle(outcome, "register", out)
    raise ClientError(0 if http.failures else 503, f"no answer from the server after {attempts} attempts")


# -------------------------------------------------------------------------------------- CLI
client_app = typer.Typer(
    help="Edge client: BlazeFace here, recognition on a FaceGate server (like the reference Android app).",
    no_args_is_help=False,
)

ServerOpt = Annotated[str, typer.Option("--server", envvar="FACEGATE_SERVER", help="FaceGate server URL.")]
KeyOpt = Annotated[
    Optional[str], typer.Option("--api-key", envvar="FACEGATE_API_KEY", help="API key, sent as 'Authorization: Bearer KEY'.", show_default=False)
]
CameraOpt = Annotated[Optional[int], typer.Option("--camera", help="Camera index (0: the first camera).")]
VideoOpt = Annotated[Optional[Path], typer.Option("--video", exists=True, dir_okay=False, help="A video file instead of a camera.")]
DetOpt = Annotated[str, typer.Option("--detector", help="BlazeFace model: short or full.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="JSON lines on stdout, one per event.")]


def _one_source(camera: int | None, video: Path | None, images: list[Path] | None = None) -> None:
    given = sum(x is not None and x != [] for x in (camera, video, images))
    if given != 1:
        allowed = "--camera N, --video FILE or --image FILE" if images is not None else "--camera N or --video FILE"
        raise typer.BadParameter(f"give exactly one of {allowed}")


def _run(fn: Callable[[], int]) -> None:
    try:
        raise typer.Exit(fn())
    except AuthError as exc:
        Console(stderr=True, soft_wrap=True).print(f"[red]refused ({exc.status}):[/red] {escape(exc.detail)} — check --api-key / FACEGATE_API_KEY")
        raise typer.Exit(3) from None
    except ClientError as exc:
        what = f"refused ({exc.status})" if exc.status else "error"
        Console(stderr=True, soft_wrap=True).print(f"[red]{what}:[/red] {escape(exc.detail)}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


@client_app.callback(invoke_without_command=True)
def recognize(
    ctx: typer.Context,
    server: ServerOpt = DEFAULT_SERVER,
    camera: CameraOpt = None,
    video: VideoOpt = None,
    image: Annotated[Optional[list[Path]], typer.Option("--image", exists=True, dir_okay=False, help="A photo (repeat for more).")] = None,
    api_key: KeyOpt = None,
    interval: Annotated[float, typer.Option(min=0.05, help="Seconds between requests at least (the reference app: 0.5).")] = 0.5,
    margin: Annotated[float, typer.Option(min=0.0, max=1.0, help="Crop margin around the face box, per side.")] = 0.25,
    detector: DetOpt = "short",
    det_threshold: Annotated[float, typer.Option(help="Minimum BlazeFace confidence.")] = 0.5,
    realtime: Annotated[bool, typer.Option(help="Play a video file at its own frame rate.")] = True,
    max_seconds: Annotated[float, typer.Option(help="Stop after this long (0: at the end of the source).")] = 0.0,
    as_json: JsonOpt = False,
    challenge: Annotated[
        Optional[bool],
        typer.Option("--challenge/--no-challenge", help="Identify through active liveness challenges (default: when the server's liveness needs them)."),
    ] = None,
) -> None:
    """Name the faces a camera, a video or photos show."""
    if ctx.invoked_subcommand is not None:
        return
    _one_source(camera, video, image or [])
    from facegate.vision.detect import BlazeFaceDetector

    out = Reporter(as_json)

    def go() -> int:
        det = BlazeFaceDetector(detector, threshold=det_threshold, pool_size=1)
        http = Throttled(server, api_key, interval)
        try:
            if image:
                recognize_images(det, http, image, out, margin)
            elif challenge if challenge is not None else server_wants_challenge(http):
                challenge_stream(http, iter(frames(camera, video, realtime)), out, max_seconds)
            else:
                recognize_stream(det, http, frames(camera, video, realtime), out, margin, max_seconds)
        finally:
            http.close()
            det.close()
        return 0

    _run(go)


@client_app.command("register")
def register_cmd(
    name: Annotated[str, typer.Argument(help="The person's name.")],
    server: ServerOpt = DEFAULT_SERVER,
    camera: CameraOpt = None,
    video: VideoOpt = None,
    api_key: KeyOpt = None,
    gap: Annotated[float, typer.Option(min=0.0, help="Seconds between the 3 photos (a countdown is shown).")] = 1.0,
    detector: DetOpt = "short",
    realtime: Annotated[bool, typer.Option(help="Play a video file at its own frame rate.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Enrol NAME from 3 frames of a camera or a video (POST /register)."""
    _one_source(camera, video)
    from facegate.vision.detect import BlazeFaceDetector

    out = Reporter(as_json)

    def go() -> int:
        det = BlazeFaceDetector(detector, pool_size=1)
        http = Throttled(server, api_key, interval=0.0)
        try:
            shots = capture_for_register(det, frames(camera, video, realtime), out, gap)
            try:
                r = register(http, name, shots, out)
            except ClientError as exc:
                which = f" (photo {['first_img', 'sec_img', 'third_img'].index(exc.field) + 1})" if exc.field in ("first_img", "sec_img", "third_img") else ""
                out.event("refused", f"[red]not registered{which}:[/] {escape(exc.detail)}", status=exc.status, detail=exc.detail, field=exc.field)
                if isinstance(exc, AuthError):
                    raise
                return 1
            out.event("registered", f"[bold green]registered {escape(r['user_name'])}[/] (person #{r['person_id']}, {r['faces']} faces)", **r)
            return 0
        finally:
            http.close()
            det.close()

    _run(go)
