"""Schemathesis against the management API's published document: no 5xx, no reply off-schema."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.manage_server import ManagementServer

# Fixed, so a failure reproduces; bounded, so the suite keeps its pace on a loaded machine.
SEED = 20260101
MAX_SECONDS = 12  # per dialect: the whole suite must stay well under 25 minutes
CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
    )
)


def test_schemathesis_finds_nothing(
    management_server: ManagementServer, management_token: str, tmp_path: Path
) -> None:
    st = shutil.which("st") or shutil.which("schemathesis")
    assert st, "schemathesis is a dev dependency: pip install -e '.[dev]'"
    run = subprocess.run(
        [
            st,
            "run",
            f"{management_server.url}/manage/openapi.json",
            "--header",
            f"Authorization: Bearer {management_token}",
            "--checks",
            CHECKS,
            "--seed",
            str(SEED),
            "--max-examples",
            "25",
            "--max-time",
            str(MAX_SECONDS),
            "--workers",
            "1",
            "--no-color",
            "--warnings",
            "off",
        ],
        capture_output=True,
        text=True,
        timeout=MAX_SECONDS * 4,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
