"""Versioned SQL migrations, one folder per dialect, files named ``NNNN_name.sql``."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

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
