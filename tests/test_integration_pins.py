"""The integrations are tested against the versions pyproject.toml pins as extras: the installed ones must be those."""
from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
EXTRAS = ("langchain", "langgraph", "langmem", "mcp")


def _pins() -> list[tuple[str, str, str]]:
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    out = []
    for extra in EXTRAS:
        for req in extras[extra]:
            m = re.fullmatch(r"([A-Za-z0-9_.-]+)==([0-9][^ ;]*)", req)
            assert m, f"extra {extra}: {req!r} is not pinned with =="
            out.append((extra, m.group(1), m.group(2)))
    return out


@pytest.mark.parametrize("extra,name,pinned", _pins())
def test_the_pinned_version_is_installed(extra, name, pinned):
    try:
        got = version(name)
    except PackageNotFoundError:
        pytest.fail(f"{name} (extra {extra}) is not installed; run scripts/setup.sh")
    assert got == pinned, f"{name} {got} is installed but extra {extra} pins {pinned}"
