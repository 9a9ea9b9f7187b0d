"""The layering the README's mental model describes, enforced: import-linter's contracts and two house rules."""
import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TASK_NAMES = {"asc", "tagging", "sed"}
# import-linter's Python API, run by this interpreter: its environment need not be activated (nor on PATH)
LINT_IMPORTS = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True))"


def test_import_contracts_hold():
    """The layering of pyproject's contracts (cli > kd > ... > kd_errors), no cycles, no torch in the store or the
    readers."""
    if importlib.util.find_spec("importlinter") is None:
        pytest.fail("import-linter is not installed (pip install -e '.[test]')")
    result = subprocess.run([sys.executable, "-c", LINT_IMPORTS], cwd=ROOT, capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "0 broken" in result.stdout


def _python_files():
    for folder in ("kd", "teachers", "students", "layers", "logit_store"):
        yield from (ROOT / folder).rglob("*.py")
    yield ROOT / "cli.py"


def _compares_with_task_name(node: ast.Compare) -> bool:
    operands = [node.left, *node.comparators]
    for operand in operands:
        values = operand.elts if isinstance(operand, (ast.Tuple, ast.List, ast.Set)) else [operand]
        if any(isinstance(v, ast.Constant) and v.value in TASK_NAMES for v in values):
            return True
    return False


def test_only_the_task_module_compares_task_names():
    """Task behaviour comes from kd.tasks.Task objects, never from comparing a task's name."""
    offenders = []
    for path in _python_files():
        if path == ROOT / "kd" / "tasks" / "__init__.py":
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        offenders += [f"{path.relative_to(ROOT)}:{n.lineno}" for n in ast.walk(tree)
                      if isinstance(n, ast.Compare) and _compares_with_task_name(n)]
    assert offenders == []
