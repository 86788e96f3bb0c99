"""Golden tests for `shopfloor check`: one directory per mistake a service engineer might make.

Every directory next to this module that holds an `agent.yaml` is a case. The test runs

    python -m agent check agent.yaml

with the case directory as the working directory (so problems print as `agent.yaml:LINE:COL:`)
and compares the result with the case's golden files:

* `expected.err`: the config is broken. The command must exit 2, print nothing on stdout, and
  print exactly this on stderr: one `agent.yaml:LINE:COL: FIELD: MESSAGE` line per problem
  (`profiles/NAME.yaml:LINE:COL: ...` for a problem in a profile file the config uses, after
  those of agent.yaml), then the summary line `N problem(s) found in agent.yaml.`
  A file of the case named by its absolute path is written `<case>/NAME`.
* `expected.out`: the config is valid (e.g. `valid_minimal`). The command must exit 0, print
  nothing on stderr, and print exactly this on stdout.

A case holds one of the two files, never both. To add a case, create `<name>/agent.yaml` with
exactly one mistake in an otherwise valid config, then write its golden file with

    UPDATE_GOLDEN=1 pytest tests/config_cases

which (re)writes `expected.err` (exit status not 0) or `expected.out` (exit status 0) for every
case from the command's actual output. Read the diff before committing it: the golden files are
the specification of what the engineer sees, so check that each line and column points at the
offending key or value and that the message says what is wrong.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

CASES_DIR = Path(__file__).resolve().parent
CONFIG_NAME = "agent.yaml"
UPDATE = os.environ.get("UPDATE_GOLDEN", "") not in ("", "0")

EXIT_OK = 0
EXIT_CONFIG = 2

PROBLEM_LINE = re.compile(r"^(agent\.yaml|profiles/[^:\s]+\.yaml):(\d+):(\d+): \S+: .+$")
SUMMARY_LINE = re.compile(r"^(\d+) problems? found in agent\.yaml\.$")


def _case_dirs() -> list[Path]:
    return sorted(path.parent for path in CASES_DIR.glob(f"*/{CONFIG_NAME}"))


def _run_check(case: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "agent", "check", CONFIG_NAME],
        cwd=case,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # Messages about files name them absolutely (a model file's resolved path): the golden
    # files hold them as `<case>/...` so that they match wherever the repository lives.
    result.stdout = result.stdout.replace(f"{case.resolve()}/", "<case>/")
    result.stderr = result.stderr.replace(f"{case.resolve()}/", "<case>/")
    return result


def _update_golden(case: Path, result: subprocess.CompletedProcess[str]) -> None:
    """Rewrite the case's golden file from the actual output (UPDATE_GOLDEN=1)."""
    err, out = case / "expected.err", case / "expected.out"
    if result.returncode == EXIT_OK:
        out.write_text(result.stdout, encoding="utf-8")
        err.unlink(missing_ok=True)
    else:
        err.write_text(result.stderr, encoding="utf-8")
        out.unlink(missing_ok=True)


def test_cases_exist() -> None:
    assert len(_case_dirs()) >= 18


@pytest.mark.parametrize("case", _case_dirs(), ids=lambda path: path.name)
def test_check_output_matches_golden(case: Path) -> None:
    result = _run_check(case)
    if UPDATE:
        _update_golden(case, result)

    assert "Traceback" not in result.stderr, result.stderr
    assert "Traceback" not in result.stdout, result.stdout

    err, out = case / "expected.err", case / "expected.out"
    assert err.is_file() != out.is_file(), (
        f"{case.name}: needs exactly one of expected.err or expected.out; "
        "run UPDATE_GOLDEN=1 pytest tests/config_cases to write it"
    )

    if out.is_file():
        assert result.stderr == ""
        assert result.stdout == out.read_text(encoding="utf-8")
        assert result.returncode == EXIT_OK
        return

    expected = err.read_text(encoding="utf-8")
    assert result.stderr == expected
    assert result.stdout == ""
    assert result.returncode == EXIT_CONFIG

    *problems, summary = expected.splitlines()
    assert problems, "an expected.err must list at least one problem"
    positions: dict[str, list[tuple[int, int]]] = {}
    for line in problems:
        problem = PROBLEM_LINE.match(line)
        assert problem, f"not FILE:LINE:COL: field: message: {line!r}"
        position = (int(problem.group(2)), int(problem.group(3)))
        positions.setdefault(problem.group(1), []).append(position)
    files = list(positions)
    assert CONFIG_NAME not in files[1:], "agent.yaml's own problems come first"
    for file, found in positions.items():
        assert found == sorted(found), f"problems in {file} must be sorted by line and column"
    match = SUMMARY_LINE.match(summary)
    assert match, f"bad summary line: {summary!r}"
    assert int(match.group(1)) == len(problems)
