"""What every benchmark hands back (a ``Section``), markdown tables, and the header of RESULTS.md."""
from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ["lr-batch-tuner", "optuna", "torch", "numpy", "scipy", "sqlalchemy", "psycopg"]


@dataclass
class Goal:
    name: str
    target: str
    measured: str
    met: bool | None  # None: not measured in this run
    why: str = ""

    @property
    def status(self) -> str:
        return {True: "met", False: "**missed**", None: "not measured"}[self.met]


@dataclass
class Section:
    """One benchmark's results: a title, what was measured, tables, goals and notes."""

    title: str
    intro: str
    tables: list[tuple[str, list[str], list[list[str]]]] = field(default_factory=list)  # caption, header, rows
    goals: list[Goal] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def table(self, caption: str, header: list[str], rows: list[list]) -> None:
        self.tables.append((caption, header, [[str(c) for c in row] for row in rows]))

    def markdown(self, goals: bool = True) -> str:
        """The section as markdown; ``goals=False`` leaves out its goals table (RESULTS.md has them all on top)."""
        blocks = [f"## {self.title}", self.intro]
        for caption, header, rows in self.tables:
            blocks += [f"**{caption}**" if caption else "", markdown_table(header, rows)]
        if self.goals and goals:
            blocks.append(markdown_table(["goal", "target", "measured", "status"],
                                         [[g.name, g.target, g.measured, g.status] for g in self.goals]))
        bullets = [f"- {g.name}: {g.why}" for g in self.goals if g.why] + [f"- {n}" for n in self.notes]
        blocks.append("\n".join(bullets))
        return "\n\n".join(b for b in blocks if b)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    numeric = [all(_is_number(row[i]) for row in rows if row[i]) and rows for i in range(len(header))]
    widths = [max(len(str(c)) for c in [h, *(row[i] for row in rows)]) for i, h in enumerate(header)]

    def line(cells) -> str:
        return "| " + " | ".join(str(c).rjust(w) if n else str(c).ljust(w)
                                 for c, w, n in zip(cells, widths, numeric)) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if n else ("-" * (w + 2)) for w, n in zip(widths, numeric)) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def _is_number(cell: str) -> bool:
    text = str(cell).lstrip("×≤≥~<>").rstrip("%sx").replace(",", "").strip()
    try:
        float(text)
    except ValueError:
        return text in ("inf", "—", "none")
    return True


# --- formatting numbers --------------------------------------------------------------------------------

def factor(log_error: float) -> str:
    """A log error as the factor it stands for (×1.00 is exact); no estimate at all shows as 'none'."""
    return "none" if not math.isfinite(log_error) else f"×{math.exp(log_error):.2f}"


def ratio(value: float, digits: int = 2) -> str:
    return "—" if not math.isfinite(value) else f"{value:.{digits}f}"


def thousands(value: float) -> str:
    return f"{value:,.0f}"


# --- the machine this ran on ---------------------------------------------------------------------------

def machine() -> dict[str, str]:
    return {
        "CPU": _cpu_model(),
        "cores": f"{os.cpu_count()} (usable: {len(os.sched_getaffinity(0))})",
        "memory": _memory(),
        "OS": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        **{name: _version(name) for name in PACKAGES},
        "commit": _commit(),
    }


def header(command: str, started: datetime, seconds: float, info: dict[str, str]) -> str:
    """``info``: ``machine()`` as it was when the run started."""
    lines = ["# Benchmark results", "",
             f"Produced by `{command}` on {started.astimezone(UTC):%Y-%m-%d %H:%M} UTC in {seconds / 60:.1f} min. "
             "Re-run it to measure your own machine; each table says what it measures and how.", "",
             markdown_table(["", ""], [[k, v] for k, v in info.items()])]
    now = _commit()
    if now != info["commit"]:
        lines += ["", f"**The code changed during the run**: it started at commit {info['commit']} and ended at {now}."]
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def _commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "tuner"], cwd=REPO, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + (" (tuner/ modified)" if dirty else "")


def log(message: str) -> None:
    """Progress, on stderr so that stdout carries only the tables."""
    print(message, file=sys.stderr, flush=True)
