"""A module's symbols read through its skeleton are exactly those of the whole module parsed:
on modules built to mislead a line reader, and on every Python file of this repository."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

from activities.repository import pysymbols

ROOT = Path(__file__).resolve().parents[3]

TRICKY = {
    "docstrings and comments at column 0": '''"""Module.

def not_a_function(x):
class NotAClass:
"""


class Store(Base, metaclass=Meta):
    """Doc that runs
over lines at column 0.
    """
# a comment at column 0 inside the class
    def get(self, key: str = "a:b#c", *args, **kw) -> dict[str, int]:
        text = """
def hidden():
"""
        return {}

    @property
    def size(self) -> int: return 1

    class Inner:
        def skipped(self): ...

    async def fetch(
        self,
        url: str = ')',  # a bracket in a string, a comment
        timeout: float = 1.0,
    ) -> bytes:
        pass
''',
    "continuation lines at column 0 in a body": """class Matrix:
    def table(self):
        rows = [
[1, 2],
[3, 4]]
        return rows

    def after(self) -> None:
        x = 1 + \\
2
        return None


def top(a,
b=lambda x: x):
    pass
""",
    "one-liners, backslashes, tabs and prefixes": """def one(): return 1
class Empty: pass
class Tabbed:
\tdef t(self, s=rb'\\'', f=f"{1}:{2}"): ...
def back\\
slash(x): ...
if True:
    def conditional(): ...
""",
    "a module that does not parse": "def broken(:\n",
}


def whole(source: str) -> list[str]:
    try:
        return pysymbols._symbols(ast.parse(source))
    except SyntaxError:
        return []


@pytest.mark.parametrize("name", TRICKY)
def test_a_misleading_module_reads_as_if_parsed_whole(name: str):
    source = TRICKY[name]
    assert pysymbols.symbols(source) == whole(source)


def test_the_skeleton_keeps_definitions_only():
    skeleton = pysymbols.skeleton(TRICKY["docstrings and comments at column 0"])
    assert skeleton is not None and "hidden" not in skeleton and "NotAClass" not in skeleton
    assert "text =" not in skeleton and "return {}" not in skeleton
    assert pysymbols.symbols(TRICKY["docstrings and comments at column 0"]) == [
        "class Store(Base):",
        "  def get(self, key: str='a:b#c', *args, **kw) -> dict[str, int]",
        "  def size(self) -> int",
        "  async def fetch(self, url: str=')', timeout: float=1.0) -> bytes",
    ]


def test_every_module_of_this_repository_reads_as_if_parsed_whole():
    # The repository's own modules, as git lists them: not .venv or .data (environments and
    # checkouts that runs leave there), which a walk of the folder would read too.
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "*.py"], capture_output=True, text=True, check=True
    )
    modules = [ROOT / name for name in listed.stdout.splitlines() if (ROOT / name).is_file()]
    assert len(modules) > 100
    different = [
        str(p.relative_to(ROOT))
        for p in modules
        if pysymbols.symbols(text := p.read_text()) != whole(text)
    ]
    assert different == []
