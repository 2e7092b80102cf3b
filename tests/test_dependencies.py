"""The dependency rules of CONVENTIONS.md: the runtime never pulls in torch or the training code."""

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN_IN_RUNTIME = ("torch", "histosmith.models", "histosmith.training", "histosmith.export",
                        "histosmith.calibration")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_runtime_source_imports_nothing_forbidden():
    """Top-level or lazy, no module under runtime/ may import torch or the training side.

    The one exception is the torch backend (the backend and its program loader), which the runtime
    imports lazily, only for .pt2 engines.
    """
    offenders = []
    for path in (REPO / "runtime").rglob("*.py"):
        if path.name in ("torch_backend.py", "torch_program.py"):
            continue
        for name in _imports(path):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN_IN_RUNTIME):
                offenders.append(f"{path.relative_to(REPO)}: {name}")
    assert not offenders, offenders


def test_importing_runtime_and_data_does_not_load_torch():
    code = (
        "import sys, importlib, pkgutil\n"
        "import histosmith.runtime as rt, histosmith.data as d\n"
        "for pkg in (rt, d):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        if not m.name.endswith(('torch_backend', 'torch_program')):\n"
        "            importlib.import_module(m.name)\n"
        "import histosmith.cli.generate\n"
        "bad = sorted(k for k in sys.modules if k == 'torch' or k.startswith(('torch.', 'histosmith.models',"
        " 'histosmith.training')))\n"
        "print(bad)\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
