"""One benchmark run, from its start to its results file.

`Session()` starts a run as every benchmark does: the agent's modules compiled (as pip does), a
console for the tables, SIGTERM made to unwind like Ctrl-C, the agent code measured announced,
and the time and the machine's load noted. `provenance` gives what the results file records
about the run; `write` writes the file; `stopped` ends a run that cannot go on.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.bytecode import compile_agent
from bench.processes import loadavg, unwind_on_sigterm
from bench.provenance import code_version, machine, versions
from drivers.simulate.broker import BrokerNotFound

__all__ = ["Session"]


class Session:
    """A benchmark run: its console, the agent code measured, its start."""

    def __init__(self) -> None:
        compile_agent()  # measure the agent as installed: bytecode compiled, as pip does
        # Piped output (CI, `tee`) would otherwise be wrapped at 80 columns.
        self.console = Console() if sys.stdout.isatty() else Console(width=120)
        unwind_on_sigterm()
        self.code = code_version()
        changed = self.code["changed_files"]
        dirty = f", {len(changed)} agent files changed" if changed else ""
        self.console.print(f"[dim]Agent code: commit {self.code['commit']}{dirty}.[/]")
        self.began = time.monotonic()
        self.load_before = loadavg()

    def provenance(self, *packages: str) -> dict[str, Any]:
        """The results file's `wall_s` (so far), `machine`, `versions` (Python's and the
        packages') and `code`."""
        return {
            "wall_s": round(time.monotonic() - self.began, 1),
            "machine": machine(self.load_before),
            "versions": versions(*packages),
            "code": self.code,
        }

    def write(self, path: Path, document: dict[str, Any]) -> None:
        """Write the results file and say so, with the run's wall time."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        self.console.print(f"[dim]Wrote {path} ({document['wall_s']} s).[/]")

    def stopped(self, reason: BrokerNotFound | KeyboardInterrupt) -> int:
        """Say why the benchmark stops early; its exit status: 2 without a broker, 130 for
        Ctrl-C or SIGTERM (every process it started is stopped by then)."""
        if isinstance(reason, KeyboardInterrupt):
            self.console.print(
                "[red]Interrupted; every process this benchmark started is stopped.[/]"
            )
            return 130
        self.console.print(f"[red]{reason}[/]")
        return 2
