"""The README says what the code does: the diagram and the settings it documents."""

from __future__ import annotations

import re
from pathlib import Path

from core.settings import Settings
from core.states import mermaid

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_readme_state_diagram_is_the_generated_one():
    block = re.search(r"```mermaid\n(.*?)\n```", README, re.S)
    assert block is not None
    assert block.group(1) == mermaid()


def test_readme_documents_every_setting_and_only_real_ones():
    table = README.split("## Configuration", 1)[1].split("###", 1)[0]
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", table))
    fields = {name.upper() for name in Settings.model_fields}
    assert documented - fields == set(), "README documents variables no setting reads"
    assert fields - documented == set(), "settings missing from the README"
