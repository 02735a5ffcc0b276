"""The runtime dependency set: requirements.lock in step with pyproject.toml, every pin hashed,
a CycloneDX SBOM made from it, and a vulnerability audit of it that fails on a known hole and
on a package it could not look up (scripts/supply-chain)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
SCRIPT = ROOT / "scripts" / "supply-chain"
PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")
HASH = re.compile(r"^\s+--hash=sha256:([0-9a-f]{64})\s*\\?$")
# pip-audit's words for a package PyPI's per-release JSON did not answer for
NOT_AUDITED = "could not be audited"


def locked(text: str) -> dict[str, tuple[str, list[str]]]:
    """{canonical name: (version, sha256 hashes)} of a `--generate-hashes` requirements file."""
    pins: dict[str, tuple[str, list[str]]] = {}
    current = ""
    for line in text.splitlines():
        if (pin := PIN.match(line)) is not None:
            current = canonicalize_name(pin.group(1))
            assert current not in pins, f"{current} pinned twice"
            pins[current] = (pin.group(2), [])
        elif (digest := HASH.match(line)) is not None:
            pins[current][1].append(digest.group(1))
        else:
            assert line.startswith("#") or line.strip().startswith("#") or not line.strip(), line
    return pins


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.defpath])}
    return subprocess.run(
        [str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def runtime_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(text) for text in project["dependencies"]]


def test_every_runtime_dependency_is_pinned_with_hashes() -> None:
    pins = locked(LOCK.read_text())
    for req in runtime_requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not locked: run scripts/supply-chain lock"
        version, hashes = pins[name]
        assert req.specifier.contains(version, prereleases=True), (
            f"requirements.lock pins {name}=={version}, outside pyproject's {req.specifier}"
        )
    for name, (version, hashes) in pins.items():
        assert hashes, f"{name}=={version} has no hash"
    # the floor the issue asks for, so a lock can never go below it
    (starlette,) = [r for r in runtime_requirements() if r.name == "starlette"]
    assert not starlette.specifier.contains("1.0.0") and starlette.specifier.contains("1.0.1")


def test_the_lock_parser_sees_a_missing_hash() -> None:
    pins = locked("a==1.0 \\\n    --hash=sha256:" + "0" * 64 + "\nb==2.0\n")
    assert pins == {"a": ("1.0", ["0" * 64]), "b": ("2.0", [])}


def test_the_lock_is_what_pyproject_resolves_to(tmp_path: Path) -> None:
    """Re-resolving with the current pins kept changes nothing: no dependency added, dropped,
    re-extra'd or re-marked in pyproject.toml since the lock was made."""
    if shutil.which("uv", path=os.path.dirname(sys.executable)) is None:
        pytest.fail("uv is missing: pip install -e '.[dev]'")
    again = tmp_path / "requirements.lock"
    shutil.copy(LOCK, again)
    done = run("lock", str(again))
    if done.returncode != 0 and "Failed to fetch" in done.stderr:
        pytest.skip(f"the package index is unreachable: {done.stderr.strip().splitlines()[-1]}")
    assert done.returncode == 0, done.stderr
    assert again.read_text() == LOCK.read_text(), "requirements.lock is stale: run the lock"


def test_the_sbom_lists_exactly_the_locked_set(tmp_path: Path) -> None:
    out = tmp_path / "sbom.cdx.json"
    done = run("sbom", str(out))
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    bom = json.loads(text)
    assert bom["bomFormat"] == "CycloneDX"
    root = bom["metadata"]["component"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert (root["name"], root["version"]) == (project["name"], project["version"])
    pins = locked(LOCK.read_text())
    listed = {canonicalize_name(c["name"]): c for c in bom["components"]}
    assert {n: c["version"] for n, c in listed.items()} == {n: v for n, (v, _) in pins.items()}
    for name, component in listed.items():
        assert component["purl"] == f"pkg:pypi/{name}@{component['version']}"
        hashes = {h["content"] for ref in component["externalReferences"] for h in ref["hashes"]}
        assert hashes == set(pins[name][1]), name


def _audit(lock: Path | None = None) -> subprocess.CompletedProcess[str]:
    return run("audit", *([str(lock)] if lock else []))


def test_the_audit_refuses_a_version_it_cannot_vouch_for(tmp_path: Path) -> None:
    """starlette 0.27.0 has published vulnerabilities: the audit fails, whether PyPI names them or
    its per-release data cannot be read from here; it never passes such a set."""
    lock = tmp_path / "old.lock"
    # the audit downloads nothing, so the hash is only there to satisfy --require-hashes
    lock.write_text("starlette==0.27.0 \\\n    --hash=sha256:" + "0" * 64 + "\n")
    done = _audit(lock)
    assert done.returncode != 0, done.stdout + done.stderr
    assert "starlette" in done.stdout + done.stderr


def test_the_locked_set_has_no_known_vulnerability() -> None:
    done = _audit()
    report = done.stdout + done.stderr
    if done.returncode != 0 and NOT_AUDITED in report and "Found " not in report:
        # Precisely what happens on a network that reaches PyPI's index but not its per-release
        # JSON (https://pypi.org/pypi/NAME/VERSION/json answers 404): nothing was checked.
        first = next(line for line in report.splitlines() if NOT_AUDITED in line)
        pytest.skip(f"PyPI's vulnerability data is unreachable from here: {first}")
    assert done.returncode == 0, report
    assert "No known vulnerabilities found" in report
