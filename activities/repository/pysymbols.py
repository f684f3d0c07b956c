"""The symbols of a Python module that the repository map shows: its top-level classes (with
their public methods) and functions, as signatures.

A module is parsed through its skeleton: its top-level `def`/`class` headers and the `def`
headers of its top-level classes' bodies, each given a `pass` body. Strings and comments are
masked first (same length, same lines), so a `def` inside a docstring or a colon inside a
default value cannot be mistaken for structure. The skeleton is a tenth of the module or
less, and parsing dominates the map's cost; a module whose skeleton does not parse is parsed
whole, so the symbols are the same either way.
"""

from __future__ import annotations

import ast
import re

# A comment, or a string literal (triple-quoted first), left to right. A prefix (r, b, f, ...)
# is left as it is: a letter, like a name's.
_MASKED = re.compile(
    r"""\#[^\n]*
    | \"\"\"(?:\\.|[^\\])*?\"\"\" | '''(?:\\.|[^\\])*?'''
    | "(?:\\.|[^"\\\n])*" | '(?:\\.|[^'\\\n])*'""",
    re.X | re.S,
)
_DEFINES = re.compile(r"(?:async\s+)?def\s|class\s")
_CLASS = re.compile(r"class\s")
_DEF = re.compile(r"(?:async\s+)?def\s")
# Bytes kept to follow brackets line by line: brackets (as parentheses) and line ends.
_AS_PARENS = bytes.maketrans(b"[{]}", b"(())")
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"()[]{}\n")))


def symbols(source: str) -> list[str]:
    """The module's top-level classes (with their methods) and functions, as signatures."""
    tree = _parsed(skeleton(source)) or _parsed(source)
    return [] if tree is None else _symbols(tree)


def _parsed(source: str | None) -> ast.Module | None:
    if source is None:
        return None
    try:
        return ast.parse(source)
    except (SyntaxError, ValueError):
        return None


def _mask(match: re.Match[str]) -> str:
    """A comment as blanks; a string as as many `x`, its line ends continued (a backslash), so
    no line inside it starts a logical line."""
    text = match.group()
    if text.startswith("#"):
        return " " * len(text)
    return "\\\n".join("x" * len(part) for part in text.split("\n"))


def skeleton(source: str) -> str | None:
    """The module's top-level definitions and its classes' methods, with `pass` bodies; None
    when its lines cannot be followed (the caller parses it whole)."""
    lines = source.split("\n")
    masked = _MASKED.sub(_mask, source)
    rows = masked.split("\n")
    brackets = masked.encode().translate(_AS_PARENS, _NOT_BRACKETS).split(b"\n")
    if not len(rows) == len(lines) == len(brackets):
        return None
    out: list[str] = []
    in_class = has_body = continued = False
    body_indent = depth = 0
    for index, row in enumerate(rows):
        starts = depth <= 0 and not continued  # a logical line starts here
        if marks := brackets[index]:
            depth += len(marks) - 2 * marks.count(b")")
        continued = row.endswith("\\")
        code = row.lstrip()
        if not starts or not code:
            continue
        indent = len(row) - len(code)
        if indent == 0:
            if in_class and not has_body:
                out.append(" pass")
            in_class, has_body, body_indent = False, False, 0
            if _DEFINES.match(code) and (header := _header(lines, rows, index)):
                in_class = bool(_CLASS.match(code))
                out += header if in_class else [*header, " pass"]
        elif in_class:
            body_indent = body_indent or indent
            method = indent == body_indent and _DEF.match(code)
            if method and (header := _header(lines, rows, index)):
                out += [*header, " " * (indent + 1) + "pass"]
                has_body = True
    if in_class and not has_body:
        out.append(" pass")
    return "\n".join(out) + "\n"


def _header(lines: list[str], rows: list[str], start: int) -> list[str]:
    """A definition's header lines, cut after its first colon outside brackets ([]: none)."""
    depth = 0
    for index in range(start, len(rows)):
        for column, char in enumerate(rows[index]):
            if char in "([{":
                depth += 1
            elif char in ")]}":
                depth -= 1
            elif char == ":" and depth == 0:
                return [*lines[start:index], lines[index][: column + 1]]
    return []


def _symbols(tree: ast.Module) -> list[str]:
    out: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            out.append(_signature(node))
        elif isinstance(node, ast.ClassDef):
            bases = ", ".join(ast.unparse(b) for b in node.bases)
            out.append(f"class {node.name}({bases}):" if bases else f"class {node.name}:")
            out += [
                f"  {_signature(item)}"
                for item in node.body
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
                and not (item.name.startswith("_") and item.name != "__init__")
            ]
    return out


def _signature(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    prefix = "async def" if isinstance(node, ast.AsyncFunctionDef) else "def"
    returns = f" -> {ast.unparse(node.returns)}" if node.returns else ""
    return f"{prefix} {node.name}({ast.unparse(node.args)}){returns}"
