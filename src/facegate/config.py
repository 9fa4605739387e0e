"""Settings from flags, environment (``FACEGATE_*``) and a TOML file, in that order of precedence.

This is the only module that reads the environment; everything else receives a ``Settings``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic import StrictInt  # access rules: a person id is an int, a name a str
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

TTAMode = Literal["none", "concat", "sum", "normsum"]
DetectorName = Literal["short", "full"]
LandmarkSource = Literal["yunet", "blazeface"]
FallbackDetector = Literal["yunet", "none"]


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "facegate"


class CameraConfig(BaseModel):
    """One camera the server watches (``[[cameras]]`` in the settings file, or ``serve --camera NAME=URL``)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Unique name: in events, the API and MQTT topics.")
    url: str = Field(
        min_length=1,
        repr=False,  # may hold a password; answers and logs show it masked
        description="rtsp://user:pass@host/path, http(s):// MJPEG, a V4L2 device (/dev/video0) or a video file (played once, at its own rate).",
    )
    fps: float = Field(5.0, gt=0.0, le=30.0, description="Frames analysed per second (the newest frame each time; never behind live).")
    identify: int = Field(3, ge=1, le=20, description="Identifications per track before it is decided (it is decided at its end if that comes first).")
    track_lost_s: float = Field(1.0, gt=0.0, le=30.0, description="A track not seen for this long has ended.")
    reconnect_max_s: float = Field(30.0, ge=0.5, le=600.0, description="Longest wait between reconnection attempts (backoff doubles from 0.5 s).")
    format: str | None = Field(None, description="FFmpeg input format when it cannot be guessed (e.g. 'mpjpeg', 'v4l2').")


class AccessRule(BaseModel):
    """Who may pass one camera's door, and when (server's local time); see docs/events.md."""

    model_config = ConfigDict(extra="forbid")

    allow: list[StrictInt | str] = Field(default_factory=list, description="Names (any case) or person ids.")
    windows: list[str] = Field(default_factory=list, description="Weekly windows, e.g. 'mon-fri 07:00-19:00'; none: always.")

    @field_validator("windows")
    @classmethod
    def _windows(cls, v: list[str]) -> list[str]:
        from facegate.events.access import parse_window

        for w in v:
            parse_window(w)
        return v


class Settings(BaseSettings):
    """Every tunable of FaceGate. Defaults are the measured ones (see README, "Accuracy")."""

    # Errors never echo what was given: camera URLs, the gallery and MQTT URLs may carry passwords.
    model_config = SettingsConfigDict(env_prefix="FACEGATE_", extra="forbid", validate_default=True, hide_input_in_errors=True)

    data_dir: Path = Field(default_factory=default_data_dir, description="Where the gallery lives.")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)

    detector: DetectorName = Field("short", description="BlazeFace short-range (faces within ~2 m) or full-range.")
    det_threshold: float = Field(0.5, gt=0.0, lt=1.0, description="Minimum BlazeFace confidence.")
    max_detect_side: int = Field(1920, ge=128, description="Images are downscaled to this long side for detection.")

    model: str = Field(
        "sface", description="Embedding model: a bundled one (sface) or one imported into <data_dir>/models."
    )
    tta: TTAMode = Field(
        "sum", description="Flip test-time augmentation: none, concat, sum, or normsum (AdaFace's norm-weighted sum)."
    )
    precision: Literal["float", "int8"] = Field(
        "float",
        description="The model's arithmetic: float, or int8 (an 8-bit copy built from the float model on first use "
        "and kept in <data_dir>/models/int8; faster on CPUs with VNNI; a gallery made at one precision needs "
        "`facegate gallery reembed --precision ...` for the other). See docs/performance.md.",
    )
    keep_crops: bool = Field(
        True, description="Store each enrolled face's aligned 112x112 crop (JPEG), needed to re-embed with a new model."
    )
    threshold: float | None = Field(
        None, ge=-1.0, le=1.0, description="Cosine similarity threshold; None uses the model's calibrated default."
    )
    top_k: int = Field(5, ge=1, le=100)

    exact_search_max: int = Field(20_000, ge=0, description="Galleries up to this many faces use exact search.")
    ann_index: Literal["pq", "hnsw"] = Field(
        "pq",
        description="Search beyond exact_search_max: pq (4-bit product-quantization scan of every face, best "
        "top_k x pq_rerank re-ranked exactly; in memory) or hnsw (hnswlib graph saved in data_dir). bench/search.py.",
    )
    pq_rerank: int = Field(50, ge=1, le=1000, description="Candidates re-ranked exactly per result wanted (pq).")
    # Chosen by bench/search.py on SFace-like vectors: recall@5 0.997 at 1.0 ms for 100k faces; 0.936 at 1.5 ms for 1M.
    hnsw_m: int = Field(32, ge=4, le=128)
    hnsw_ef_construction: int = Field(200, ge=16)
    hnsw_ef: int = Field(256, ge=8)

    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1024, description="Requests above this are refused unread.")
    max_image_pixels: int = Field(40_000_000, ge=1024)
    max_request_pixels: int = Field(
        90_000_000, ge=1024, description="Decoded pixels in all of one request's images at most (a large JPEG counts reduced); beyond, 413."
    )
    max_server_pixels: int = Field(
        128_000_000, ge=1024, description="Decoded pixels held by all requests at once at most (3 bytes each); beyond, 503."
    )
    min_image_side: int = Field(24, ge=1)
    max_name_length: int = Field(128, ge=1, le=1024)
    inference_threads: int = Field(2, ge=1, le=64, description="Model threads: calls side by side under load (one core each); a lone request uses them all.")
    worker_threads: int = Field(8, ge=1, le=256, description="Threads decoding, detecting and searching for requests.")
    max_batch: int = Field(
        1, ge=1, le=256, description="Requests' faces embedded in one model call at most (x2 with flip TTA); 1: each call one request."
    )
    batch_wait_ms: float = Field(0.0, ge=0.0, le=100.0, description="Extra wait to fill a batch; 0 takes what queued.")
    embed_queue: int = Field(64, ge=1, description="Requests waiting for the model at most; beyond, 503.")
    max_pending: int = Field(64, ge=1, description="Requests in progress at most; beyond, 503 at once.")
    request_timeout_s: float = Field(10.0, gt=0.0, description="A request not answered by then gets 503.")
    admission_slots: int = Field(
        -1,
        ge=-1,
        description="Model requests in progress at most; the others wait in one queue per key (per address when keys "
        "are off), served in turn, so a flooding client gets no more turns than a polite one. -1: 2 x inference_threads; 0: off.",
    )
    admission_queue_per_client: int = Field(
        32, ge=1, description="Model requests of one key (or address) waiting for a turn at most; beyond, 503 at once."
    )
    latency_budget_s: float = Field(
        0.7, gt=0.0, description="Refuse (503) a request whose queued work ahead would exceed this, at the model's pace."
    )
    workers: int = Field(1, ge=1, le=64, description="Server processes sharing the gallery.")
    batch_scheduling: bool = Field(
        True,
        description="Run the server's threads under Linux SCHED_BATCH: a waking request thread no longer "
        "preempts a model call (more requests/s under load; README, 'Many requests at once').",
    )

    # ---- alignment landmarks and quality gate (issue 5); values chosen by `facegate eval --compare`, README "Accuracy"
    landmarks: LandmarkSource = Field(
        "yunet", description="Alignment points: YuNet's 5 (run around BlazeFace's box) or BlazeFace's own 4."
    )
    fallback_detector: FallbackDetector = Field(
        "yunet", description="Detector tried when BlazeFace finds no face (small faces in a wide frame), or none."
    )
    quality_gate: bool = Field(True, description="Refuse poor faces at enrolment; answer 'retry' to poor probes.")
    enroll_min_face_px: float | None = Field(48.0, ge=0, description="Enrolment: smallest face (px of the aligned region).")
    # Defaults kept only where the signal's error-versus-discard curve (`facegate eval --edc`) falls clearly below
    # random on lfw-dev and on every degraded copy: the feature norm and the face size. Sharpness, brightness and
    # head pose did not (docs/accuracy.md): they are measured and reported, and refuse nothing unless set here.
    enroll_min_sharpness: float | None = Field(None, ge=0, description="Enrolment: least sharpness (Laplacian variance / contrast).")
    enroll_min_brightness: float | None = Field(None, ge=0, le=255, description="Enrolment: darkest mean grey level.")
    enroll_max_brightness: float | None = Field(None, ge=0, le=255, description="Enrolment: brightest mean grey level.")
    enroll_max_yaw: float | None = Field(
        None, ge=0, le=90, description="Enrolment: largest head turn, degrees (the 3D estimate, good to ~6 deg up to 60)."
    )
    enroll_min_feature_norm: float | None = Field(
        None, ge=0, description="Enrolment: least embedding feature norm; None: the model's measured default; 0: off."
    )
    illumination: Literal["none", "clahe", "gamma"] = Field(
        "none", description="Normalise the aligned face's luminance before embedding: CLAHE, a gamma to mid-grey, or none."
    )
    enroll_min_faces: int = Field(
        1, ge=1, le=10, description="Enrolment: photos that must pass the gate; the others are left out and listed as 'dropped'."
    )
    allow_duplicates: bool = Field(
        False,
        description="Enrol faces that match another enrolled person above the threshold (else 409 looks_like; "
        "a request's allow_duplicate overrides).",
    )
    retry_min_face_px: float | None = Field(24.0, ge=0, description="Identify: below this face size, answer 'retry'.")
    retry_min_sharpness: float | None = Field(None, ge=0, description="Identify: below this sharpness, answer 'retry'.")
    retry_min_brightness: float | None = Field(None, ge=0, le=255, description="Identify: below this brightness, 'retry'.")
    retry_min_feature_norm: float | None = Field(
        None, ge=0, description="Identify: below this feature norm, 'retry'; None: the model's measured default; 0: off."
    )
    liveness: Literal["off", "passive", "challenge", "both"] = Field(
        "off",
        description="passive: every /v1/identify and /predict face is checked by the imported liveness models "
        "(`facegate models import-liveness`) and a face judged a print or a screen is answered 'spoof', never named. "
        "challenge: a face is named only by answering an active challenge (POST /v1/challenges, blink and head turns: "
        "the web app's live page and `facegate client` do); /v1/identify and /predict answer 'challenge_required', "
        "never a name. both: the two together.",
    )
    enroll_liveness: bool = Field(
        False,
        description="Registration (POST /v1/people) requires `challenge_id`, a challenge passed by the person "
        "being enrolled within challenge_ttl_s; their photos must match its face. The reference /register is refused.",
    )
    challenge_ttl_s: float = Field(10.0, gt=0, le=120, description="Seconds a liveness challenge may be answered in, from its creation.")
    challenge_actions: str = Field(
        "blink,turn_left,turn_right",
        description="The actions a liveness challenge asks two of, comma-separated: blink, turn_left, turn_right. Leave "
        "blink out where cameras miss blinks (a low frame rate, thick glasses); with two actions only their order is random.",
    )
    challenge_max_open: int = Field(
        10_000, ge=1, description="Liveness challenges open (asked, unanswered, unexpired) at once, all clients together; beyond, 503 busy."
    )
    challenge_max_open_per_key: int = Field(
        1_000, ge=1, description="Liveness challenges open at once per API key (all clients together when keys are off); beyond, 503 busy."
    )
    challenge_closed_ear: float = Field(
        0.2, gt=0, lt=1, description="Challenge blink: eyes closed below this eye aspect ratio (Soukupova and Cech 2016; open eyes read 0.25-0.35)."
    )
    challenge_blink_ratio: float = Field(
        0.7, gt=0, le=1, description="Challenge blink: the closed frame's eye aspect ratio at most this fraction of the neutral frames'."
    )
    challenge_turn_yaw: float = Field(
        20.0, ge=5, le=60, description="Challenge turn: degrees the head must turn, to the named side, from the neutral frames (and from straight ahead)."
    )

    # Trust (README, "Security").
    rate_limit_per_key: str = Field("100/second", description="Requests per API key (limits syntax, e.g. '10/second;300/minute'; '' off).")
    rate_limit_per_ip: str = Field("100/second", description="Requests per client address, keyed or not ('' off).")
    rate_limit_auth_failures: str = Field("30/minute", description="Requests with a missing or wrong key per address ('' off).")
    rate_limit_storage: str = Field(
        "memory://", description="Where counters live: memory:// (per process) or redis://host:port to share them between workers."
    )
    forwarded_allow_ips: str = Field(
        "", description="Reverse proxies trusted for X-Forwarded-For (comma-separated IPs), so limits see the real client."
    )
    allowed_hosts: str = Field(
        "",
        description="Host header names answered besides localhost, loopback addresses and the bind address (any IP address "
        "when bound to 0.0.0.0); comma-separated, '*' any. Others: 400 (DNS rebinding).",
    )
    max_connections: int = Field(
        1024,
        ge=1,
        description="Open connections at most; at the cap a new one evicts the oldest still waiting for its headers "
        "(else it is closed).",
    )
    max_connections_per_ip: int = Field(
        200, ge=1, description="Open connections per client address at most; beyond, new ones are closed at once."
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0.0,
        description="A connection that has not sent a whole request's headers this long after opening (or after its "
        "last answer) is closed.",
    )
    encryption_key: str | None = Field(
        None,
        repr=False,
        description="Fernet key sealing face vectors, crops and names at rest (set FACEGATE_ENCRYPTION_KEY; never store it beside the data).",
    )

    # ---- gallery backend (issue 8, README "Scaling out")
    gallery: str | None = Field(
        None,
        repr=False,  # a URL may hold a password
        description="None: the embedded gallery (SQLite + hnswlib) in data_dir; a postgresql:// URL: PostgreSQL + pgvector, shared by many servers.",
    )
    pg_ef_search: int = Field(200, ge=1, le=1000, description="pgvector hnsw.ef_search: candidates per HNSW query (bench/pg_search.py: recall@5 0.993 at 100k).")
    pg_pool_size: int = Field(10, ge=2, le=200, description="Database connections per server process at most.")

    # ---- events, webhooks, MQTT and door access rules (issue 21, docs/events.md)
    events_keep_days: float | None = Field(30.0, gt=0, description="Events older than this many days are deleted (None: kept).")
    events_keep_max: int | None = Field(100_000, ge=1, description="Newest events kept at most; older ones are deleted (None: no cap).")
    events_prune_interval_s: float = Field(60.0, gt=0, description="How often retention (events_keep_days, events_keep_max) runs.")
    events_queue: int = Field(
        1000, ge=1, description="Events waiting to be stored at most; when full the oldest is dropped (facegate_events_dropped)."
    )
    events_keepalive_s: float = Field(15.0, gt=0, description="A comment line is sent on an idle /v1/events/stream this often.")
    webhook_timeout_s: float = Field(5.0, gt=0, le=60, description="One webhook delivery's HTTP timeout.")
    webhook_attempts: int = Field(4, ge=1, le=10, description="Tries per webhook delivery (the first and its retries).")
    webhook_backoff_s: float = Field(1.0, ge=0, le=300, description="Wait before the first retry; doubled before each next one.")
    webhook_queue: int = Field(200, ge=1, description="Deliveries waiting per webhook at most; beyond, the new one is logged as dropped.")
    mqtt_url: str | None = Field(
        None,
        repr=False,  # may hold a password
        description="MQTT broker for events: mqtt://user:pass@host:1883 (mqtts:// for TLS); None: no MQTT.",
    )
    mqtt_ca_file: Path | None = Field(None, description="CA certificates (PEM) to check an mqtts:// broker with; None: the system's.")
    mqtt_topic_prefix: str = Field("facegate", min_length=1, description="Topics are <prefix>/<camera>/event and <prefix>/<camera>/state.")
    mqtt_discovery_prefix: str | None = Field(
        "homeassistant", description="Home Assistant MQTT discovery prefix (a sensor per camera); None: no discovery."
    )
    access: dict[str, AccessRule] = Field(
        default_factory=dict,
        description="Door access rules per camera name: [access.door] allow = [\"Ada\", 12], windows = [\"mon-fri 07:00-19:00\"]. "
        "Events of a camera with a rule carry decision granted or denied.",
    )

    @field_validator("mqtt_url")
    @classmethod
    def _mqtt_url(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        from urllib.parse import urlsplit

        u = urlsplit(v.strip())
        if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
            raise ValueError("mqtt_url must be mqtt://[user:pass@]host[:port] or mqtts://...")
        return v.strip()

    # ---- cameras (issue 21, docs/cameras.md)
    cameras: list[CameraConfig] = Field(default_factory=list, description="Cameras watched by the server ([[cameras]] tables; `serve --camera NAME=URL`).")
    camera_claim_s: float = Field(
        2.0, gt=0.0, le=60.0, description="How often a server tries to take a camera nobody watches (PostgreSQL gallery: one server per camera)."
    )

    @field_validator("cameras")
    @classmethod
    def _camera_names(cls, v: list[CameraConfig]) -> list[CameraConfig]:
        names = [c.name for c in v]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"camera names must be unique: {', '.join(twice)}")
        return v

    @field_validator("gallery")
    @classmethod
    def _gallery_url(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        if v.split("://", 1)[0] not in ("postgresql", "postgres"):
            raise ValueError("gallery must be a postgresql:// URL (or unset for the embedded gallery in data_dir)")
        return v.strip()

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def passive_liveness(self) -> bool:
        """Faces are checked by the passive model (``liveness`` "passive" or "both")."""
        return self.liveness in ("passive", "both")

    @property
    def challenge_liveness(self) -> bool:
        """Only an answered challenge names a face (``liveness`` "challenge" or "both")."""
        return self.liveness in ("challenge", "both")

    @property
    def challenge_action_list(self) -> tuple[str, ...]:
        return tuple(self.challenge_actions.split(","))

    @field_validator("challenge_actions")
    @classmethod
    def _actions(cls, v: str) -> str:
        from facegate.vision.challenge import ACTIONS

        names = list(dict.fromkeys(a.strip().lower() for a in v.split(",") if a.strip()))
        unknown = [a for a in names if a not in ACTIONS]
        if unknown:
            raise ValueError(f"unknown challenge actions {unknown}: choose from {', '.join(ACTIONS)}")
        if len(names) < 2:
            raise ValueError(f"a challenge asks two distinct actions: name at least two of {', '.join(ACTIONS)}")
        return ",".join(names)

    @field_validator("rate_limit_per_key", "rate_limit_per_ip", "rate_limit_auth_failures")
    @classmethod
    def _rate(cls, v: str) -> str:
        from limits import parse_many

        if v.strip():
            try:
                parse_many(v)
            except ValueError as exc:
                raise ValueError(f"not a rate limit (e.g. '10/second;300/minute'): {v!r} ({exc})") from None
        return v.strip()

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        return Path(v).expanduser()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> Settings:
    """Build settings: ``overrides`` (CLI flags; None means not given) > env > TOML file > defaults.

    The TOML file is ``config_file``, else ``$FACEGATE_CONFIG``, else none.
    """
    path = config_file or os.environ.get("FACEGATE_CONFIG")
    if path is not None and not Path(path).is_file():
        raise FileNotFoundError(f"config file not found: {path}")

    class _FileSettings(Settings):
        model_config = SettingsConfigDict(**{**Settings.model_config, "toml_file": path})

    given = {k: v for k, v in overrides.items() if v is not None}
    return _FileSettings(**given)


#: Environment variable through which `facegate serve --workers N` hands its settings to each worker process.
SETTINGS_ENV = "FACEGATE_SETTINGS_JSON"


def settings_for_workers(settings: Settings) -> dict[str, str]:
    """Environment entries that make ``settings_from_environment`` rebuild ``settings`` in a worker."""
    return {SETTINGS_ENV: settings.model_dump_json()}


def settings_from_environment() -> Settings:
    """The settings a parent `facegate serve` handed down (see ``settings_for_workers``)."""
    text = os.environ.get(SETTINGS_ENV)
    if not text:
        raise RuntimeError(f"{SETTINGS_ENV} is not set: start workers through `facegate serve --workers N`")
    return Settings.model_validate_json(text)
