"""The lock of exact pins (`constraints.txt`): make it, check it, and try what the next releases would do.

`constraints.txt` pins every distribution of the environment `make setup` builds, one `name==version`
line each (no hashes, no addresses: see docs/development.md). `make setup` installs with
`pip install -c constraints.txt`, so every machine gets the set the tests last passed with, whatever
was released since. `pyproject.toml` keeps ranges for people who install multiembed into their own
environment; the lock must satisfy them (`problems`, checked by tests/test_lock.py).

    python tools/lockfile.py compile        # make lock: resolve pyproject.toml afresh, write constraints.txt
    python tools/lockfile.py upgrade-check  # make upgrade-check: newest allowed versions, fast tests, demo

Both build a throwaway virtual environment with the Python that runs this script; neither touches .venv.
Only the standard library is used at the top level, so the machine's bare `python3` can run it.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "constraints.txt"
PYPROJECT = ROOT / "pyproject.toml"
PROJECT = "multiembed"
EXTRAS = "test"  # the extra `make setup` installs (it pulls in ray and dask)
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[A-Za-z0-9.+!_-]+)$")
UNLOCKED = "MULTIEMBED_UNLOCKED"  # set by upgrade-check: the environment is meant to differ from the lock
HEADER = """\
# Exact pins of every distribution `make setup` installs (direct and transitive, test, ray and dask extras).
# Made by `make lock` (tools/lockfile.py) from pyproject.toml; checked by tests/test_lock.py. Do not edit by hand.
"""


def canonical(name: str) -> str:
    """The normalised form of a distribution name (PEP 503): case and runs of -_. do not matter."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_lock(text: str) -> tuple[dict[str, str], list[str]]:
    """(canonical name -> version, problems): every non-comment line must be one `name==version` pin."""
    pins: dict[str, str] = {}
    problems = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = PIN.match(line)
        if match is None:
            problems.append(f"line {number}: {line!r} is not a plain name==version pin (no hashes, URLs or ranges)")
            continue
        name = canonical(match["name"])
        if name in pins:
            problems.append(f"line {number}: {match['name']} is pinned twice")
        pins[name] = match["version"]
    return pins, problems


def declared(pyproject: dict) -> list[str]:
    """Every requirement string of the project and all its extras, the project's own extras left out."""
    project = pyproject["project"]
    strings = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        strings += extra
    return [s for s in strings if canonical(re.split(r"[\s\[<>=!~;]", s, maxsplit=1)[0]) != PROJECT]


def problems(pyproject: dict, lock_text: str) -> list[str]:
    """What is wrong with the lock against pyproject.toml: malformed or repeated lines, requirements that
    are not pinned, or pinned at a version their specifier does not allow."""
    from packaging.requirements import Requirement  # a dependency of the test environment, not of `compile`

    pins, found = parse_lock(lock_text)
    for text in declared(pyproject):
        requirement = Requirement(text)
        name = canonical(requirement.name)
        if name not in pins:
            found.append(f"{requirement.name} ({text}) is not pinned in the lock")
        elif not requirement.specifier.contains(pins[name], prereleases=True):
            found.append(f"{requirement.name}=={pins[name]} in the lock is outside pyproject.toml's {text!r}")
    return found


def differences(lock: dict[str, str], installed: dict[str, str]) -> list[str]:
    """How an environment differs from the lock, one line per distribution, sorted by name."""
    lines = []
    for name in sorted(set(lock) | set(installed)):
        have, want = installed.get(name), lock.get(name)
        if have != want:
            lines.append(f"{name}: lock {want or '-'}, installed {have or '-'}")
    return lines


def installed_here() -> dict[str, str]:
    """Canonical name -> version of every distribution of the running interpreter, the project left out."""
    from importlib.metadata import distributions

    return {canonical(d.metadata["Name"]): d.version for d in distributions()
            if canonical(d.metadata["Name"]) != PROJECT}


def _run(args: Iterable[str | Path], **kwargs: object) -> subprocess.CompletedProcess:
    args = [str(a) for a in args]
    print("+", " ".join(args), flush=True)
    return subprocess.run(args, **kwargs)  # noqa: S603 (our own commands)


def fresh_environment(where: Path) -> Path:
    """A new virtual environment at `where` with the newest pip and setuptools, the project installed (editable,
    with its test extra) at the newest versions pyproject.toml allows; its python."""
    _run([sys.executable, "-m", "venv", where], check=True)
    python = where / "bin" / "python"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PIP_CONSTRAINT", None)
    _run([python, "-m", "pip", "install", "--quiet", "--upgrade", "pip", "setuptools"], check=True, env=env)
    _run([python, "-m", "pip", "install", "--quiet", "-e", f"{ROOT}[{EXTRAS}]"], check=True, env=env)
    return python


def freeze(python: Path) -> str:
    """`pip freeze` of an environment: every distribution (pip and setuptools included), the project left out."""
    return _run([python, "-m", "pip", "freeze", "--all", "--exclude-editable"], check=True, capture_output=True,
                text=True).stdout


def compile_lock(out: Path) -> int:
    """Resolve pyproject.toml in a throwaway environment and write its exact pins to `out`."""
    with tempfile.TemporaryDirectory(prefix="multiembed-lock-") as tmp:
        pins = freeze(fresh_environment(Path(tmp) / "venv"))
    lines = sorted((line.strip() for line in pins.splitlines() if PIN.match(line.strip())),
                   key=lambda line: canonical(line.split("==")[0]))
    out.write_text(HEADER + "\n".join(lines) + "\n")
    print(f"wrote {len(lines)} pins to {out}")
    return 0


def upgrade_check() -> int:
    """Newest allowed versions in a throwaway environment: the fast tests and the demo there, then which
    packages differ from the lock and what failed. Exit 1 when something failed."""
    lock, _ = parse_lock(LOCK.read_text())
    env = {**os.environ, UNLOCKED: "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    failed = []
    with tempfile.TemporaryDirectory(prefix="multiembed-upgrade-") as tmp:
        python = fresh_environment(Path(tmp) / "venv")
        newest, _ = parse_lock(freeze(python))
        if _run([python, "-m", "pytest", "-q", "-m", "not slow", "-p", "no:cacheprovider"], cwd=ROOT,
                env=env).returncode:
            failed.append("fast tests (pytest -m 'not slow')")
        if _run([Path(tmp) / "venv" / "bin" / "multiembed", "demo", "--dir", Path(tmp) / "demo"], cwd=ROOT,
                env=env).returncode:
            failed.append("the demo (multiembed demo)")
    changed = differences(lock, newest)
    print(f"\n{len(changed)} distributions differ from constraints.txt (newest allowed vs locked):")
    print("\n".join(f"  {line}" for line in changed) or "  none")
    print("failed: " + (", ".join(failed) if failed else "nothing; `make lock` would take these versions"))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("compile", help="resolve pyproject.toml afresh and write constraints.txt")
    commands.add_parser("upgrade-check", help="test the newest allowed versions; print what differs and failed")
    commands.add_parser("check", help="check constraints.txt against pyproject.toml and this environment")
    args = parser.parse_args(argv)
    if args.command == "compile":
        return compile_lock(LOCK)
    if args.command == "upgrade-check":
        return upgrade_check()
    lock_text = LOCK.read_text()
    found = problems(tomllib.loads(PYPROJECT.read_text()), lock_text) + differences(parse_lock(lock_text)[0],
                                                                                   installed_here())
    print("\n".join(found) or "constraints.txt matches pyproject.toml and this environment")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
