"""Versioned SQL migrations, one folder per dialect, files named ``NNNN_name.sql``.

A change plain SQL cannot make well (bounds that depend on the time, a scan that must not
hold a strong lock) names a Python step in its file, ``-- step: NAME``: the dialect's store
runs ``prepare_step(NAME)`` before the migrations' transaction and ``apply_step(NAME)`` in
it, after the file's statements (``SqlStore.migrate``)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

_STEP = "-- step:"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def step(self) -> str | None:
        """The Python step this migration names, if any."""
        for line in self.sql.splitlines():
            if line.startswith(_STEP):
                return line.removeprefix(_STEP).strip()
        return None

    def statements(self) -> list[str]:
        """The file split into statements (our migrations keep ';' out of literals)."""
        lines = [ln for ln in self.sql.splitlines() if not ln.lstrip().startswith("--")]
        return [part.strip() for part in "\n".join(lines).split(";") if part.strip()]


def load(dialect: str) -> list[Migration]:
    folder = resources.files(__package__).joinpath(dialect)
    out = []
    for entry in folder.iterdir():
        name = entry.name
        if not name.endswith(".sql"):
            continue
        version = int(name.split("_", 1)[0])
        out.append(Migration(version, name.removesuffix(".sql"), entry.read_text("utf-8")))
    out.sort(key=lambda m: m.version)
    if len({m.version for m in out}) != len(out):
        raise RuntimeError(f"duplicate migration versions in {dialect}")
    return out
