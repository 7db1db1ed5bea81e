"""The lock (`constraints.txt`) against pyproject.toml and against the environment the tests run in."""

from __future__ import annotations

import os
import tomllib

import pytest

from tools import lockfile

PYPROJECT = {"project": {
    "name": "multiembed",
    "dependencies": ["torch==2.11.0", "pyarrow>=18", "Typing_Extensions>=4; python_version >= '3.11'"],
    "optional-dependencies": {"test": ["multiembed[ray]", "pytest>=8"], "ray": ["ray==2.60.*"]},
}}
GOOD = "# a comment\ntorch==2.11.0\npyarrow==26.0.1\ntyping-extensions==4.15.0\npytest==9.0.2\nray==2.60.1\n"


def test_the_committed_lock_pins_every_requirement_of_pyproject_at_an_allowed_version():
    pyproject = tomllib.loads(lockfile.PYPROJECT.read_text())
    assert lockfile.problems(pyproject, lockfile.LOCK.read_text()) == []


@pytest.mark.skipif(bool(os.environ.get(lockfile.UNLOCKED)), reason="upgrade-check: newer than the lock on purpose")
def test_this_environment_is_exactly_the_lock():
    """`make setup` installed the lock and nothing else (pip freeze against the file)."""
    lock, _ = lockfile.parse_lock(lockfile.LOCK.read_text())
    assert lockfile.differences(lock, lockfile.installed_here()) == []


def test_a_consistent_lock_has_no_problems():
    assert lockfile.problems(PYPROJECT, GOOD) == []


def test_a_requirement_missing_from_the_lock_is_named():
    found = lockfile.problems(PYPROJECT, GOOD.replace("ray==2.60.1\n", ""))
    assert found == ["ray (ray==2.60.*) is not pinned in the lock"]


def test_a_pin_outside_the_range_is_named():
    found = lockfile.problems(PYPROJECT, GOOD.replace("torch==2.11.0", "torch==2.11.1"))
    assert found == ["torch==2.11.1 in the lock is outside pyproject.toml's 'torch==2.11.0'"]


def test_names_are_compared_in_their_normal_form_and_a_repeat_is_named():
    found = lockfile.problems(PYPROJECT, GOOD + "Typing.Extensions==4.15.0\n")
    assert found == ["line 7: Typing.Extensions is pinned twice"]


@pytest.mark.parametrize("line", ["torch==2.11.0 --hash=sha256:abc", "torch>=2.11", "torch @ https://x/t.whl",
                                  "-e ."])
def test_only_plain_pins_are_allowed(line):
    found = lockfile.problems(PYPROJECT, GOOD.replace("torch==2.11.0", line))
    assert found[0].startswith("line 2: ") and "not a plain name==version pin" in found[0]


def test_differences_list_what_changed_was_added_and_is_missing():
    lock = {"numpy": "2.4.6", "scipy": "1.17.1", "six": "1.17.0"}
    installed = {"numpy": "2.5.5", "scipy": "1.17.1", "zipp": "3.23.0"}
    assert lockfile.differences(lock, installed) == [
        "numpy: lock 2.4.6, installed 2.5.5", "six: lock 1.17.0, installed -", "zipp: lock -, installed 3.23.0"]
