"""The README is the front door: every flag of `voxwire serve` is named there (each is an
environment variable too, `VOXWIRE_` and its name, as the README says once for all)."""

import re
from dataclasses import fields
from pathlib import Path

from server.runtime.config import Settings

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_setting_is_named_in_the_readme() -> None:
    named = set(re.findall(r"`(--[a-z0-9-]+)", README.read_text()))
    missing = [f"--{f.name.replace('_', '-')}" for f in fields(Settings)
               if f.metadata.get("flag", True) and f"--{f.name.replace('_', '-')}" not in named]
    assert not missing, f"settings the README does not name: {missing}"
