"""The documentation site: `mkdocs build --strict` passes, and the generated references are complete.

The settings, CLI and HTTP reference pages are built from the code at build time (docs/gen_ref.py,
through mkdocs-gen-files); these tests read the built HTML and check that every Settings field (with
its environment variable), every `facegate` command and every HTTP route is there, so a page that
dropped one fails here. The systemd unit shown on the deployment page is checked by
`systemd-analyze verify`.
"""

from __future__ import annotations

import html
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "docs" / "deploy" / "facegate.service"
#: The unit's ExecStart path; the check runs on a copy pointing at this environment's `facegate`.
UNIT_EXEC = "/opt/facegate/.venv/bin/facegate"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "DISABLE_MKDOCS_2_WARNING": "true", "NO_MKDOCS_2_WARNING": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"), "-d", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=env,
    )
    assert r.returncode == 0, f"mkdocs build --strict failed (pip install -e '.[test]' installs MkDocs):\n{r.stdout}\n{r.stderr}"
    return out


def page(site: Path, name: str) -> str:
    path = site / name / "index.html"
    assert path.is_file(), f"{name} was not built"
    return html.unescape(path.read_text(encoding="utf-8"))


def missing_settings(text: str) -> list[str]:
    from facegate.config import Settings

    return [
        name for name in Settings.model_fields
        if f'id="{name}"' not in text or f"FACEGATE_{name.upper()}" not in text
    ]


def command_paths() -> list[str]:
    """Every command a user can type, from Typer's click tree (groups and their commands)."""
    import typer.main

    from facegate.cli.main import app

    def walk(cmd, path):
        yield " ".join(path)
        for name, sub in getattr(cmd, "commands", {}).items():
            if not getattr(sub, "hidden", False):
                yield from walk(sub, [*path, name])

    return list(walk(typer.main.get_command(app), ["facegate"]))


def missing_commands(text: str) -> list[str]:
    return [p for p in command_paths() if f"<code>{p}</code>" not in text]


def test_settings_page_lists_every_field_with_its_environment_variable(site):
    text = page(site, "reference/settings")
    assert missing_settings(text) == []
    # The check itself fails on a page that lost a field.
    from facegate.config import Settings

    name = next(iter(Settings.model_fields))
    assert missing_settings(text.replace(f'id="{name}"', "").replace(f"FACEGATE_{name.upper()}", "")) == [name]


def test_cli_page_lists_every_command(site):
    text = page(site, "reference/cli")
    paths = command_paths()
    assert {"facegate serve", "facegate enroll", "facegate identify", "facegate eval", "facegate keys create"} <= set(paths)
    assert missing_commands(text) == []
    assert missing_commands(text.replace("<code>facegate people list</code>", "")) == ["facegate people list"]


def test_http_page_lists_every_route(site):
    from facegate.api.app import create_app
    from facegate.config import Settings

    text = page(site, "reference/http")
    routes = [f"{m.upper()} {p}" for p, ops in create_app(Settings()).openapi()["paths"].items() for m in ops]
    assert {"POST /register", "POST /predict", "POST /v1/identify", "POST /v1/people"} <= set(routes)
    assert [r for r in routes if f"<code>{r}</code>" not in text] == []


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path):
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd): docs/deploy/facegate.service not checked")
    unit = UNIT.read_text()
    assert f"ExecStart={UNIT_EXEC} serve" in unit
    # verify also checks that ExecStart's program exists: point a copy at this environment's.
    here = Path(sys.executable).with_name("facegate")
    copy = tmp_path / "facegate.service"
    copy.write_text(unit.replace(UNIT_EXEC, str(here if here.exists() else Path(sys.executable))))
    r = subprocess.run([exe, "verify", str(copy)], capture_output=True, text=True, timeout=120)
    said = (r.stdout + r.stderr).strip()
    # verify exits 0 on a misspelt key or a bad value, only saying so: any line about the unit fails.
    complaints = [line for line in said.splitlines() if "facegate.service" in line]
    assert r.returncode == 0 and not complaints, said


def test_readme_is_short_and_its_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.startswith("npm ci ")]
    assert len(ci) == 1, ci
    assert ci[0] in readme.splitlines(), "the README's test command must be the one .ci/run runs, verbatim"
    for image in ("docs/img/live.png", "docs/img/gallery.png"):
        assert image in readme and (ROOT / image).is_file(), image
