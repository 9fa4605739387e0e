"""The `facegate` command, run as a real subprocess (`python -m facegate.cli`) with real models.

The tests in the first part share one data directory and run in file order: enrol a folder,
list, identify, enrol again (skip, then add), delete. The server test at the end uses its own.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import facegate, said

EILEEN, OTHER = "Eileen Collins", "Other Person"


def listed(data: Path) -> dict[str, int]:
    """`facegate people list` parsed: name -> face count."""
    proc = facegate("people", "list", "--data", data)
    assert proc.returncode == 0, proc.stderr
    rows = {}
    for line in proc.stdout.splitlines():
        cells = [c.strip() for c in re.split(r"[│|┃]", line)]
        cells = [c for c in cells if c]
        if len(cells) == 4 and cells[0].isdigit():
            rows[cells[1]] = int(cells[2])
    return rows


def identified(data: Path, image: Path) -> list[dict]:
    proc = facegate("identify", image, "--json", "--data", data)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def save(image: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(image)).save(path, quality=95)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory, astronaut, other_face) -> Path:
    """people/<Name>/*.jpg (Eileen x3, Other Person x2, Nobody: a blank grey image) and astronaut.jpg."""
    root = tmp_path_factory.mktemp("cli")
    a, o = np.asarray(astronaut), np.asarray(other_face)
    people = root / "people"
    save(a[0:320, 40:420], people / EILEEN / "crop.jpg")
    save(a[:, ::-1], people / EILEEN / "flip.jpg")
    save(np.clip(a.astype(np.float32) * 1.2 + 10, 0, 255).astype(np.uint8), people / EILEEN / "bright.jpg")
    save(o, people / OTHER / "one.jpg")
    save(o[:, ::-1], people / OTHER / "two.jpg")
    save(np.full((200, 200, 3), 128, np.uint8), people / "Nobody" / "grey.jpg")
    (people / "notes.txt").write_text("not a person folder")
    save(a, root / "astronaut.jpg")
    save(np.full((120, 160, 3), 90, np.uint8), root / "blank.jpg")
    return root


@pytest.fixture(scope="module")
def data(photos) -> Path:
    return photos / "data"


# ------------------------------------------------------------------ help
def test_help_lists_the_commands():
    proc = facegate("--help")
    assert proc.returncode == 0, proc.stderr
    for cmd in ("serve", "enroll", "identify", "people"):
        assert re.search(rf"\b{cmd}\b", proc.stdout), cmd
    sub = facegate("people", "--help")
    assert sub.returncode == 0 and "list" in sub.stdout and "delete" in sub.stdout


def test_console_script_is_installed():
    exe = Path(sys.executable).parent / "facegate"
    if not exe.exists():
        pytest.skip("no facegate console script beside this interpreter")
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "enroll" in proc.stdout


# ------------------------------------------------------------------ enrol, list, identify, delete (in order)
def test_enroll_folder(photos, data):
    proc = facegate("enroll", photos / "people", "--data", data)
    assert proc.returncode == 0, proc.stderr
    out = said(proc)
    assert "enrolled 2 people, 0 already enrolled" in out
    assert "Nobody" in out and "no face" in out and "not enrolled" in out
    assert "grey.jpg" in out
    assert (data / "gallery.sqlite3").is_file()


def test_people_list_shows_both(data):
    assert listed(data) == {EILEEN: 3, OTHER: 2}


def test_identify_json_names_the_astronaut(photos, data):
    rows = identified(data, photos / "astronaut.jpg")
    assert len(rows) == 1
    row = rows[0]
    assert row["name"] == EILEEN
    assert isinstance(row["person_id"], int)
    assert row["image"].endswith("astronaut.jpg")
    x1, y1, x2, y2 = row["box"]
    assert 0 <= x1 < x2 <= 512 and 0 <= y1 < y2 <= 512
    assert 0 < row["similarity"] <= 1


def test_identify_plain_text_and_no_face(photos, data):
    proc = facegate("identify", photos / "astronaut.jpg", photos / "blank.jpg", "--data", data)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) == 2
    assert "astronaut.jpg" in lines[0] and EILEEN in lines[0]
    assert "blank.jpg" in lines[1] and "no face" in lines[1]
    rows = identified(data, photos / "blank.jpg")
    blank = {"image": str(photos / "blank.jpg"), "box": None, "status": None, "name": None, "person_id": None, "similarity": None}
    assert rows == [blank]


def test_identify_missing_file_fails_with_a_message(photos, data):
    missing = photos / "no-such-photo.jpg"
    proc = facegate("identify", missing, photos / "astronaut.jpg", "--json", "--data", data)
    assert proc.returncode != 0
    assert "no-such-photo.jpg" in said(proc)
    # The other image is still answered.
    assert EILEEN in proc.stdout


def test_enroll_again_skips_already_enrolled(photos, data):
    proc = facegate("enroll", photos / "people", "--data", data)
    assert proc.returncode == 0, proc.stderr
    assert "enrolled 0 people, 2 already enrolled" in said(proc)
    assert listed(data) == {EILEEN: 3, OTHER: 2}


def test_enroll_existing_add_adds_faces(photos, data):
    proc = facegate("enroll", photos / "people", "--existing", "add", "--data", data)
    assert proc.returncode == 0, proc.stderr
    assert "enrolled 2 people" in said(proc)
    assert listed(data) == {EILEEN: 6, OTHER: 4}


def test_enroll_bad_arguments_fail(photos, data):
    proc = facegate("enroll", photos / "astronaut.jpg", "--data", data)
    assert proc.returncode != 0 and "not a folder" in said(proc)
    proc = facegate("enroll", photos / "people", "--existing", "replace", "--data", data)
    assert proc.returncode != 0 and "--existing" in said(proc)
    assert listed(data) == {EILEEN: 6, OTHER: 4}


def test_people_delete_by_name(photos, data):
    proc = facegate("people", "delete", OTHER, "--data", data)
    assert proc.returncode == 0, proc.stderr
    assert f"deleted {OTHER}" in said(proc)
    assert listed(data) == {EILEEN: 6}
    assert identified(data, photos / "astronaut.jpg")[0]["name"] == EILEEN


def test_people_delete_unknown_fails(data):
    for who in ("9999", OTHER):
        proc = facegate("people", "delete", who, "--data", data)
        assert proc.returncode != 0, who
        assert who in said(proc) or "no person" in said(proc)
    assert listed(data) == {EILEEN: 6}


def test_names_with_brackets_are_printed_as_they_are(tmp_path, other_face):
    """Names and paths are data, not console markup: "[nee smith]" must not vanish, "[/x]" must not crash."""
    people = tmp_path / "people"
    save(np.asarray(other_face), people / "mary [nee smith]" / "a [copy].jpg")
    save(np.full((200, 200, 3), 128, np.uint8), people / "mary [nee smith]" / "b [copy].jpg")
    save(np.full((200, 200, 3), 128, np.uint8), people / "tom [b]" / "grey.jpg")
    d = tmp_path / "data"
    proc = facegate("enroll", people, "--data", d)
    assert proc.returncode == 0, proc.stderr
    out = said(proc)
    assert "mary [nee smith]/b [copy].jpg" in out
    assert "tom [b]: not enrolled: grey.jpg: no face detected" in out
    assert listed(d) == {"mary [nee smith]": 1}
    proc = facegate("identify", tmp_path / "gone[/i].jpg", "--data", d)
    assert proc.returncode == 1 and "gone[/i].jpg" in said(proc) and "Traceback" not in proc.stderr
    proc = facegate("people", "delete", "mary [nee smith]", "--data", d)
    assert proc.returncode == 0 and "deleted mary [nee smith]" in said(proc)


# ------------------------------------------------------------------ CLI and server on one data directory
def test_running_server_sees_cli_writes(start_server, tmp_path, photos, astronaut_payloads):
    _, predict = astronaut_payloads
    data = tmp_path / "shared-data"
    srv = start_server(data)
    with srv.client() as http:
        assert http.get("/v1/people").json()["count"] == 0
        assert http.post("/predict", json=predict).json()["user_name"] == "unknown"

        proc = facegate("enroll", photos / "people", "--data", data)
        assert proc.returncode == 0, proc.stderr

        names = {p["name"]: p for p in http.get("/v1/people").json()["people"]}
        assert set(names) == {EILEEN, OTHER}
        assert names[EILEEN]["face_count"] == 3
        p = http.post("/predict", json=predict).json()
        assert p["user_name"] == EILEEN and p["person_id"] == names[EILEEN]["id"]
        assert http.get("/healthz").json()["gallery"]["faces"] == 5

        # A delete by the CLI is noticed too.
        proc = facegate("people", "delete", EILEEN, "--data", data)
        assert proc.returncode == 0, proc.stderr
        assert http.post("/predict", json=predict).json()["user_name"] == "unknown"
        assert http.get(f"/v1/people/{names[EILEEN]['id']}").status_code == 404
        assert http.get("/healthz").json()["gallery"] == {"people": 1, "faces": 2, "search": "exact"}

        # And the other way round: the server's write is seen by the CLI.
        r = http.post("/register", json=astronaut_payloads[0])
        assert r.status_code == 200, r.text
    assert listed(data) == {OTHER: 2, EILEEN: 3}
    assert identified(data, photos / "astronaut.jpg")[0]["person_id"] == r.json()["person_id"]


def test_healthz_counts_follow_cli_writes_without_a_search(start_server, tmp_path, photos):
    """/healthz alone (no search in between) reflects people enrolled by another process."""
    data = tmp_path / "shared-data"
    srv = start_server(data)
    with srv.client() as http:
        assert http.get("/healthz").json()["gallery"]["people"] == 0
        proc = facegate("enroll", photos / "people", "--data", data)
        assert proc.returncode == 0, proc.stderr
        assert http.get("/healthz").json()["gallery"] == {"people": 2, "faces": 5, "search": "exact"}


def test_identify_a_folder_recursively_to_csv_with_a_threshold(photos, tmp_path):
    """`identify FOLDER --recursive --csv FILE --threshold T`: one row per face (and per image without one)."""
    import csv

    data = tmp_path / "data"  # its own gallery: the tests above delete people from theirs
    assert facegate("enroll", photos / "people", "--data", data).returncode == 0
    out = tmp_path / "faces.csv"
    proc = facegate("identify", photos / "people", "--recursive", "--csv", out, "--data", data)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(out.open()))
    assert {r["image"].rsplit("/", 1)[-1] for r in rows} == {"crop.jpg", "flip.jpg", "bright.jpg", "one.jpg", "two.jpg", "grey.jpg"}
    assert {r["name"] for r in rows if "/Eileen Collins/" in r["image"]} == {EILEEN}
    assert [r["status"] for r in rows if r["image"].endswith("grey.jpg")] == ["no_face"]
    assert all(r["status"] == "recognized" for r in rows if r["image"].endswith(("crop.jpg", "one.jpg")))
    # Without --recursive a folder of folders holds no image; a threshold no face reaches names nobody.
    proc = facegate("identify", photos / "people", "--data", data)
    assert proc.returncode == 0 and proc.stdout.strip() == ""
    proc = facegate("identify", photos / "astronaut.jpg", "--threshold", "0.999", "--json", "--data", data)
    row = json.loads(proc.stdout.splitlines()[0])
    assert row["status"] == "unknown" and row["name"] == "unknown"
    assert facegate("identify", photos / "astronaut.jpg", "--threshold", "3", "--data", data).returncode == 2
