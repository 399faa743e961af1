"""The shape docs/architecture.md promises: methods known by their registry only, a top level of packages,
modules of a readable size. (The import layers are import-linter's: `make lint`, run before the tests.)"""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest

from stew import methods
from stew.config import MethodName
from stew.errors import DataError

SRC = Path(__file__).resolve().parents[1] / "src" / "stew"


def test_every_configurable_method_is_registered_and_only_those():
    assert list(methods.REGISTRY) == list(get_args(MethodName))
    for name, definition in methods.REGISTRY.items():
        assert definition.name == name and callable(definition.build)
    with pytest.raises(DataError, match="unknown method 'nope'; choose from"):
        methods.get("nope")


def test_top_level_holds_packages_and_the_four_modules():
    modules = sorted(p.name for p in SRC.glob("*.py"))
    assert modules == ["__init__.py", "__main__.py", "config.py", "errors.py"]


def test_long_modules_say_why():
    for path in SRC.rglob("*.py"):
        lines = path.read_text().splitlines()
        if len(lines) > 500:
            assert any("longer than 500 lines" in line.lower() for line in lines[:15]), path
