"""The Dockerfile, read by BuildKit's own parser (no Docker engine here: nothing is built)."""

from __future__ import annotations

import fnmatch
import re
import shlex
from dataclasses import dataclass, field

import dockerfile
import pytest

from tests.deploy_wiring import ROOT, unknown_variables

COMPILERS = re.compile(
    r"\b(build-essential|gcc|g\+\+|clang|make|cmake|cargo|rustc|golang|libc6?-dev|[a-z0-9]+-dev)\b"
)


@dataclass
class Stage:
    name: str
    base: str
    commands: list[dockerfile.Command] = field(default_factory=list)

    def all(self, cmd: str) -> list[dockerfile.Command]:
        return [c for c in self.commands if c.cmd == cmd]

    def last(self, cmd: str) -> dockerfile.Command:
        found = self.all(cmd)
        assert found, f"stage {self.name} has no {cmd}"
        return found[-1]


def stages() -> list[Stage]:
    parsed = dockerfile.parse_file(str(ROOT / "Dockerfile"))
    out: list[Stage] = []
    for command in parsed:
        if command.cmd == "FROM":
            base = command.value[0]
            name = command.value[2] if len(command.value) >= 3 else str(len(out))
            out.append(Stage(name=name, base=base))
        elif out:
            out[-1].commands.append(command)
    return out


def arg_defaults() -> dict[str, str]:
    parsed = dockerfile.parse_file(str(ROOT / "Dockerfile"))
    defaults: dict[str, str] = {}
    for command in parsed:
        if command.cmd == "ARG":
            name, _, value = command.value[0].partition("=")
            defaults[name] = value
    return defaults


def test_the_image_is_built_in_stages_on_a_slim_python() -> None:
    found = stages()
    assert len(found) >= 2, "multi-stage: wheels in one stage, the runtime in another"
    args = arg_defaults()
    for stage in found:
        base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], stage.base)
        assert re.fullmatch(r"python:3\.1[12]-slim(-\w+)?", base), base
    build = found[0]
    assert any("pip wheel" in " ".join(c.value) for c in build.all("RUN")), "wheels built first"


def test_the_runtime_stage_has_no_build_tools_and_installs_only_wheels() -> None:
    runtime = stages()[-1]
    for run in runtime.all("RUN"):
        text = " ".join(run.value)
        assert not COMPILERS.search(text), f"build tool in the final image: {text}"
        if "pip install" in text:
            assert "--no-index" in text, "the runtime installs the wheels of the build stage only"
    # Only the wheels come from the build stage, and never as a layer of their own.
    for copy in runtime.all("COPY"):
        assert not any(flag.startswith("--from") for flag in copy.flags), copy.original
    assert any("from=build" in " ".join(r.flags) for r in runtime.all("RUN"))


def test_the_runtime_stage_runs_as_a_non_root_user() -> None:
    runtime = stages()[-1]
    user = runtime.last("USER").value[0]
    name, _, group = user.partition(":")
    assert name not in ("root", "0") and group not in ("root", "0")
    assert name.isdigit() and int(name) >= 1000, "a numeric uid lets Kubernetes check runAsNonRoot"
    # The chart's runAsUser is the image's user.
    values = (ROOT / "helm" / "llm-proxy" / "values.yaml").read_text()
    assert f"runAsUser: {name}" in values


def test_the_entrypoint_is_llm_proxy_and_the_default_command_the_server() -> None:
    runtime = stages()[-1]
    entrypoint = runtime.last("ENTRYPOINT")
    assert entrypoint.json and entrypoint.value == ("llm-proxy",), "exec form, so signals reach it"
    cmd = runtime.last("CMD")
    assert cmd.json and cmd.value == ("server",)


def test_the_healthcheck_asks_live_on_the_port_the_server_listens_on() -> None:
    runtime = stages()[-1]
    check = runtime.last("HEALTHCHECK")
    assert check.value[0] == "CMD"
    probe = " ".join(check.value[1:])
    assert "/live" in probe
    env = {}
    for command in runtime.all("ENV"):
        pairs = command.value
        env.update(dict(zip(pairs[::2], pairs[1::2], strict=True)))
    assert env.get("HOST") == "0.0.0.0", "in a container the server listens on every interface"
    assert "PORT" in probe and env.get("PORT") == "8080"
    exposed = {p for c in runtime.all("EXPOSE") for p in c.value}
    assert exposed == {env["PORT"]}
    assert unknown_variables(set(env)) == []


def _ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics for the patterns we use: the last matching pattern wins."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        matched = any(
            fnmatch.fnmatch(prefix, pattern)
            or (pattern.startswith("**/") and fnmatch.fnmatch(parts[i], pattern[3:]))
            for i, prefix in enumerate(prefixes)
        )
        if matched:
            ignored = not negate
    return ignored


def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_dockerignore_admits_what_the_build_copies_and_nothing_secret() -> None:
    patterns = dockerignore()
    copied = []
    for stage in stages():
        for copy in stage.all("COPY"):
            if not any(flag.startswith("--from") for flag in copy.flags):
                copied += list(copy.value[:-1])
    assert copied
    for source in copied:
        assert not _ignored(source, patterns), f"COPY {source} is excluded by .dockerignore"
        assert (ROOT / source).exists(), f"COPY {source}: no such file"
    for secret in ("compose/.env", ".env", "llm-proxy.db", "llm-proxy.db.key", "shared/x.key"):
        assert _ignored(secret, patterns), f"{secret} would be sent to the Docker daemon"
    for noise in (".git/config", ".venv/bin/python", "tests/test_x.py", "shared/__pycache__/a.pyc"):
        assert _ignored(noise, patterns), noise


@pytest.mark.parametrize(
    ("path", "expected"),
    [("shared/config.py", False), ("helm/llm-proxy/values.yaml", True), ("README.md", False)],
)
def test_the_dockerignore_reading_itself(path: str, expected: bool) -> None:
    assert _ignored(path, dockerignore()) is expected


def test_the_package_sources_the_build_needs_are_all_copied() -> None:
    """Every package setuptools packs (pyproject `include`) is copied into the build stage."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    include = re.search(r"include = \[([^\]]*)\]", pyproject)
    assert include
    packages = {p.strip().strip('"').rstrip("*") for p in include.group(1).split(",")}
    build = stages()[0]
    copied = {shlex.split(c.original)[1].rstrip("/") for c in build.all("COPY")}
    assert packages <= copied, packages - copied


def test_the_image_installs_the_locked_set_hash_checked() -> None:
    """Dependencies come from requirements.lock, every file checked against its hashes, in both
    stages; the project itself is installed with --no-deps, so nothing outside the lock enters."""
    build, runtime = stages()[0], stages()[-1]
    build_runs = [" ".join(r.value) for r in build.all("RUN")]
    fetch = [t for t in build_runs if "pip wheel" in t and "-r requirements.lock" in t]
    assert fetch and "--require-hashes" in fetch[0], build_runs
    copies = [shlex.split(c.original)[1:-1] for c in build.all("COPY")]
    assert ["requirements.lock"] in copies
    project = [t for t in build_runs if re.search(r"pip wheel .* \.$", t)]
    assert project and "--no-deps" in project[0], "the project's wheel brings no dependency"
    installs = [
        step.strip()
        for run in runtime.all("RUN")
        for step in " ".join(run.value).split("&&")
        if "pip install" in step
    ]
    assert len(installs) == 2, installs
    locked, own = installs
    assert "--require-hashes" in locked and re.search(r"-r \S*requirements\.lock\b", locked)
    assert "--no-deps" in own and "--no-index" in own
