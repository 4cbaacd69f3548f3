import ast
import subprocess
import sys

import pytest

from conftest import ROOT

PACKAGE = ROOT / "llmframe"


def test_ruff_clean():
    pytest.importorskip("ruff")
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "llmframe", "tests", "bench"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stdout


def _body_lines(node: ast.AST) -> int:
    """Lines of a def's or class's body, without its docstring."""
    body = node.body  # type: ignore[attr-defined]
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    if not body:
        return 0
    return body[-1].end_lineno - body[0].lineno + 1


def test_the_shape_holds_small_modules_classes_and_functions():
    """No module over 400 lines, no class over 150, no function body over 60."""
    too_big = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        name = path.relative_to(ROOT)
        if text.count("\n") > 400:
            too_big.append(f"{name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and _body_lines(node) > 150:
                too_big.append(f"{name}: class {node.name} {_body_lines(node)} lines")
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) \
                    and _body_lines(node) > 60:
                too_big.append(f"{name}: def {node.name} {_body_lines(node)} lines")
    assert not too_big, "\n".join(too_big)
