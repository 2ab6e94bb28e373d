"""The README's YAML reference is kept true: every key of the schema, and nothing else."""

from __future__ import annotations

import re

from sidecar.config import SCHEMA
from tests.conftest import ROOT


def documented_keys() -> set[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## The service description (YAML)", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z_.]+)` \|", section, flags=re.MULTILINE))


def schema_keys() -> set[str]:
    keys = {f"{section}.{key}" for section, names in SCHEMA.items() for key in names}
    return keys


def test_every_schema_key_is_documented() -> None:
    assert schema_keys() - documented_keys() == set()


def test_no_documented_key_is_unknown() -> None:
    assert documented_keys() - schema_keys() == set()


def test_readme_gives_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    assert "make demo" in text and "make test" in text
    assert "make test" in (ROOT / ".ci" / "run").read_text()
