"""The Python examples of README.md and docs/*.md, and how their shown values are checked.

Every fenced ``python`` block is an example that runs. In it:

- ``expr  # -> VALUE`` claims the value of ``expr`` (or of what ``name = expr`` assigns):
  ``repr(expr)`` must be VALUE, or VALUE, evaluated in the example's names, must equal
  it (so ``# -> {s: [2]}`` works for an id held in ``s``). Prose may follow after
  ``: ``, ``; `` or `` (``. For a ``print(...)`` call the claim is the printed line.
  A claim too long for the line goes on a comment line of its own right after the
  statement.
- ``stmt  # raises NAME ...`` claims that the statement raises NAME (or a subclass);
  the example goes on after it.
- Any other comment is prose and is not checked.

An HTML comment right before the block says what it needs, ``;``-separated:
``<!-- example: root; setup=ns_holder -->``. ``root``: skipped unless run as root.
``namespace``: skipped where no IPC namespace can be made. ``setup=NAME[,NAME]``: names
given to the example by the setups of tests/test_docs_examples.py. ``pytest``: the
block is a test module, run by pytest. ``skip=REASON``: shown, never run.

Run as a script (``python docs_examples.py FILE LINE [--alone]``, the names of the
setups as JSON on stdin) it runs the block that starts at LINE of FILE and exits
non-zero on a failed claim; with ``--alone`` (in an IPC namespace of its own) also if
the block left an object in it. tests/test_docs_examples.py does that for each block,
in a process of its own.
"""

from __future__ import annotations

import ast
import io
import json
import re
import sys
import tokenize
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent

_FENCE = re.compile(r"^```python\b")
_MARKER = re.compile(r"^<!--\s*example:(.*?)-->\s*$")
_CLAIM = re.compile(r"#\s*->\s*(.*\S)\s*$")
_RAISES = re.compile(r"#\s*raises\s+([A-Za-z_][\w.]*)")


@dataclass(frozen=True)
class Example:
    """One fenced python block: where it is, its code and what its marker asks for."""
    path: Path
    line: int  # the line of its first line of code, 1-based
    code: str
    needs: Dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def setups(self) -> List[str]:
        return [s.strip() for s in self.needs.get("setup", "").split(",") if s.strip()]


def documents() -> List[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def examples(path: Path) -> List[Example]:
    lines = path.read_text().splitlines()
    found = []
    marker: Optional[str] = None
    i = 0
    while i < len(lines):
        m = _MARKER.match(lines[i].strip())
        if m:
            marker = m.group(1)
        elif _FENCE.match(lines[i]):
            end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
            if end is None:
                raise ValueError(f"{path}:{i + 1}: the python block is not closed")
            found.append(Example(path, i + 2, "\n".join(lines[i + 1:end]) + "\n",
                                 _parse_needs(marker or "")))
            marker = None
            i = end
        elif lines[i].strip():
            marker = None  # a marker applies only to the block right after it
        i += 1
    return found


def _parse_needs(marker: str) -> Dict[str, str]:
    needs = {}
    for part in marker.split(";"):
        key, _, value = part.strip().partition("=")
        if key:
            needs[key.strip()] = value.strip()
    unknown = set(needs) - {"root", "namespace", "setup", "pytest", "skip"}
    if unknown:
        raise ValueError(f"unknown example needs {sorted(unknown)} in {marker!r}")
    return needs


# ---- running one example ----------------------------------------------------------

@dataclass
class _Claim:
    line: int
    text: str
    raises: bool
    ran: int = 0


class ClaimFailed(AssertionError):
    pass


def _claims(code: str) -> Dict[int, Tuple[str, bool]]:
    """Comments that claim something, by the line they sit on (1-based in the block)."""
    found = {}
    for tok in tokenize.generate_tokens(io.StringIO(code).readline):
        if tok.type != tokenize.COMMENT:
            continue
        claim, raises = _CLAIM.match(tok.string), _RAISES.match(tok.string)
        if claim:
            found[tok.start[0]] = (claim.group(1), False)
        elif raises:
            found[tok.start[0]] = (raises.group(1), True)
    return found


class _Checked(ast.NodeTransformer):
    """Turns each statement that carries a claim into a call of the checker."""

    def __init__(self, code: str, offset: int, where: str) -> None:
        self.where = where
        self.pending = _claims(code)
        self.lines = code.splitlines()
        self.offset = offset
        self.claims: List[_Claim] = []

    def _claim_for(self, node: ast.stmt) -> Optional[_Claim]:
        last = node.end_lineno or node.lineno
        spot = next((n for n in (last, last + 1) if n in self.pending), None)
        if spot == last + 1 and not self.lines[last].lstrip().startswith("#"):
            spot = None  # only a comment line of its own carries on a statement's claim
        if spot is None:
            return None
        text, raises = self.pending.pop(spot)
        claim = _Claim(node.lineno + self.offset, text, raises)
        self.claims.append(claim)
        return claim

    def generic_visit(self, node: ast.AST) -> ast.AST:
        for name, value in ast.iter_fields(node):
            if isinstance(value, list) and value and isinstance(value[0], ast.stmt):
                setattr(node, name, [self._statement(s) for s in value])
            elif isinstance(value, list):
                for item in value:
                    if isinstance(item, ast.AST):
                        self.visit(item)
            elif isinstance(value, ast.AST):
                self.visit(value)
        return node

    def _statement(self, node: ast.stmt) -> ast.stmt:
        self.generic_visit(node)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.With,
                             ast.For, ast.While, ast.If, ast.Try)):
            return node
        claim = self._claim_for(node)
        if claim is None:
            return node
        index = ast.Constant(len(self.claims) - 1)
        if claim.raises:
            # try: STMT / except BaseException as e: _raised(i, e) / else: _raised(i, None)
            def call(arg: ast.expr) -> ast.stmt:
                return ast.Expr(ast.Call(ast.Name("__docs_raised__", ast.Load()), [index, arg], []))
            new: ast.stmt = ast.Try(
                body=[node],
                handlers=[ast.ExceptHandler(ast.Name("BaseException", ast.Load()), "__docs_e__",
                                            [call(ast.Name("__docs_e__", ast.Load()))])],
                orelse=[call(ast.Constant(None))], finalbody=[])
        elif isinstance(node, ast.Expr):
            value = node.value
            if (isinstance(value, ast.Call) and isinstance(value.func, ast.Name)
                    and value.func.id == "print"):
                value = ast.Call(ast.Name("__docs_print__", ast.Load()),
                                 [index, *value.args], value.keywords)
                new = ast.Expr(value)
            else:
                new = ast.Expr(ast.Call(ast.Name("__docs_value__", ast.Load()),
                                        [index, value], []))
        elif isinstance(node, ast.Assign):
            node.value = ast.Call(ast.Name("__docs_value__", ast.Load()), [index, node.value], [])
            new = node
        else:
            raise ClaimFailed(f"{self.where}:{claim.line}: only an expression, an assignment or "
                              f"print() can carry a '# ->' claim")
        return ast.fix_missing_locations(ast.copy_location(new, node))


def _matches(value: Any, shown: str, text: str, names: Dict[str, Any]) -> bool:
    if text == shown or any(text.startswith(shown + sep) for sep in (": ", "; ", " (")):
        return True
    cuts = [m.start() for m in re.finditer(r"[:;] | \(", text)] + [len(text)]
    for cut in cuts:
        try:
            expected = eval(text[:cut], names)  # noqa: S307 - the docs' own claim
        except Exception:
            continue
        return bool(expected == value)
    return False


def run(example: Example, names: Dict[str, Any]) -> None:
    """Runs the example with ``names`` defined; raises ClaimFailed on a wrong claim."""
    where = str(example.path.relative_to(ROOT))
    checked = _Checked(example.code, example.line - 1, where)
    tree = checked.visit(ast.parse(example.code))
    if checked.pending:
        line = min(checked.pending)
        raise ClaimFailed(f"{where}:{line + example.line - 1}: this claim belongs to no "
                          f"statement that can carry it")
    ast.increment_lineno(tree, example.line - 1)
    claims = checked.claims

    def value(i: int, got: Any, shown: Optional[str] = None) -> Any:
        claims[i].ran += 1
        if not _matches(got, repr(got) if shown is None else shown, claims[i].text, namespace):
            raise ClaimFailed(f"{where}:{claims[i].line}: the docs show {claims[i].text!r}, "
                              f"the code gives {got!r}")
        return got

    def printed(i: int, *args: Any, **kwargs: Any) -> None:
        out = io.StringIO()
        print(*args, **{**kwargs, "file": out})
        print(out.getvalue(), end="")
        text = out.getvalue().rstrip("\n")
        value(i, text, text)

    def raised(i: int, err: Optional[BaseException]) -> None:
        claims[i].ran += 1
        wanted = claims[i].text.rsplit(".", 1)[-1]
        if err is None:
            raise ClaimFailed(f"{where}:{claims[i].line}: the docs say it raises {wanted}, "
                              f"it raised nothing")
        if wanted not in {c.__name__ for c in type(err).__mro__}:
            raise ClaimFailed(f"{where}:{claims[i].line}: the docs say it raises {wanted}, "
                              f"it raised {err!r}") from err

    namespace: Dict[str, Any] = {"__name__": "__main__", **names, "__docs_value__": value,
                                 "__docs_print__": printed, "__docs_raised__": raised}
    exec(compile(tree, where, "exec"), namespace)  # noqa: S102 - the docs' own example
    never = [c.line for c in claims if not c.ran]
    if never:
        raise ClaimFailed(f"{where}: the claims on lines {never} were never reached")


def _objects_left() -> List[str]:
    """The IPC objects of the calling process's namespace, one line of /proc/sysvipc each."""
    left = []
    for kind in ("msg", "sem", "shm"):
        with open(f"/proc/sysvipc/{kind}") as table:
            left += [f"{kind}: {row.strip()}" for row in table.readlines()[1:]]
    return left


def main(argv: List[str]) -> int:
    path, line = ROOT / argv[1], int(argv[2])
    example = next(e for e in examples(path) if e.line == line)
    run(example, json.loads(sys.stdin.read() or "{}"))
    left = _objects_left() if "--alone" in argv[3:] else []
    if left:
        raise ClaimFailed(f"{example.name} left {len(left)} IPC object(s) behind:\n"
                          + "\n".join(left))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
