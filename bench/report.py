"""What the benchmarks report: agent against bare in tables, the targets, the results' figures."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from rich.console import Console
from rich.table import Table

from bench.measure import SubjectRun

__all__ = [
    "Rows",
    "TargetCheck",
    "exit_status",
    "print_comparison",
    "print_round_ratios",
    "print_targets",
    "ratio",
    "runs_document",
    "show",
    "target_check",
]

VERDICT = {True: "[green]PASS[/]", False: "[red]FAIL[/]", None: "[yellow]n/a[/]"}

# (label, RunResult attribute, format) of each row of a comparison table.
Rows = Sequence[tuple[str, str, str]]


def ratio(a: float | None, b: float | None, digits: int = 2) -> float | None:
    """a / b, None where either is missing or b is 0."""
    if a is None or b is None or b == 0:
        return None
    return round(a / b, digits)


def show(value: Any, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def figure(run: SubjectRun, attribute: str) -> Any:
    """A figure of a run; None where the run failed."""
    return None if run.error else getattr(run, attribute)


# -- agent against bare, per workload ----------------------------------------------------------


def print_comparison(
    console: Console,
    title: str,
    results: Mapping[str, Mapping[str, SubjectRun]],
    rows: Rows,
    no_ratio: frozenset[str] = frozenset(),
) -> None:
    """For each workload (results: workload -> subject -> run), the agent's, the bare script's
    figure and their ratio on every row; no ratio for the attributes in `no_ratio`."""
    table = Table(title=title)
    table.add_column("metric")
    for workload in results:
        table.add_column(f"{workload}\nagent", justify="right")
        table.add_column(f"{workload}\nbare", justify="right")
        table.add_column(f"{workload}\nagent/bare", justify="right")
    for label, attribute, fmt in rows:
        cells = [label]
        for pair in results.values():
            a, b = figure(pair["agent"], attribute), figure(pair["bare"], attribute)
            shown_ratio = None if attribute in no_ratio else ratio(a, b)
            cells += [show(a, fmt), show(b, fmt), show(shown_ratio, "{:.2f}")]
        table.add_row(*cells)
    console.print(table)


def runs_document(
    results: Mapping[str, Mapping[str, SubjectRun]],
    rows: Rows,
    no_ratio: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """The results file's `runs`: for each workload every subject's run, and as `ratio`
    agent/bare of every row's figure (none for the attributes in `no_ratio`)."""
    return {
        name: {
            **{subject: asdict(run) for subject, run in pair.items()},
            "ratio": {
                attribute: ratio(figure(pair["agent"], attribute), figure(pair["bare"], attribute))
                for _label, attribute, _fmt in rows
                if attribute not in no_ratio
            },
        }
        for name, pair in results.items()
    }


def print_round_ratios(
    console: Console, round_ratios: Mapping[str, Sequence[float | None]], unit: str
) -> None:
    """Each workload's agent/bare CPU per 1,000 `unit` in each round."""
    for name, ratios in round_ratios.items():
        shown = ", ".join("-" if value is None else f"{value:.2f}" for value in ratios)
        console.print(f"{name}: agent/bare CPU per 1,000 {unit} in each round: {shown}")


# -- targets -----------------------------------------------------------------------------------


@dataclass
class TargetCheck:
    target: str
    workload: str
    value: str
    passed: bool | None  # None: could not be measured


class Verdict(Protocol):
    """A checked target: `TargetCheck`, or one without a workload."""

    target: str
    value: str
    passed: bool | None


def target_check(
    name: str,
    agent: SubjectRun,
    bare: SubjectRun,
    value: float | None,
    fmt: Callable[[float], str],
    ok: bool,
    *,
    needs_bare: bool = False,
) -> TargetCheck:
    """Target `name` in the agent's workload: `value` shown with `fmt`, passed if `ok`; n/a
    where the agent's run failed, the value is missing or, with `needs_bare`, the bare run
    failed."""
    if agent.error or value is None or (needs_bare and bare.error):
        return TargetCheck(name, agent.workload, "n/a", None)
    return TargetCheck(name, agent.workload, fmt(value), ok)


def print_targets(console: Console, checks: Sequence[Verdict]) -> None:
    """The targets, with a workload column where they are `TargetCheck`s, and the verdicts."""
    targets = Table(title="Targets")
    targets.add_column("target")
    if any(isinstance(check, TargetCheck) for check in checks):
        targets.add_column("workload")
    targets.add_column("agent", justify="right")
    targets.add_column("result")
    for check in checks:
        workload = [check.workload] if isinstance(check, TargetCheck) else []
        targets.add_row(check.target, *workload, check.value, VERDICT[check.passed])
    console.print(targets)


def exit_status(checks: Sequence[Verdict], check: bool) -> int:
    """1 with `--check` when a target failed or could not be measured, else 0."""
    failed = any(verdict.passed is not True for verdict in checks)
    return 1 if check and failed else 0
