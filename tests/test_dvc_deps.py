"""Every DVC stage depends on all the code it runs: the import closure of `cnnlab.cli` and the stage's module
inside src/cnnlab must be covered by the stage's `deps`, or an edit there leaves stale outputs that DVC
reports as up to date."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def module_file(name: str) -> Path | None:
    base = SRC / name.replace(".", "/")
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def imported(f: Path) -> set[str]:
    """cnnlab modules `f` imports anywhere (lazy imports inside functions run too), with their packages."""
    names = set()
    for node in ast.walk(ast.parse(f.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}  # `from pkg import mod`
    out = set()
    for n in (n for n in names if n.split(".")[0] == "cnnlab"):
        parts = n.split(".")
        out |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}  # importing a.b.c runs a and a.b
    return {n for n in out if module_file(n)}


def closure(*roots: str) -> set[Path]:
    seen, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += imported(module_file(name))
    return {module_file(n) for n in seen}


def is_code(f: Path) -> bool:
    """An __init__.py with only a docstring and constants (no imports, functions or classes) runs nothing."""
    runs = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef)
    return f.name != "__init__.py" or any(isinstance(n, runs) for n in ast.walk(ast.parse(f.read_text())))


def uncovered(dvc_yaml: dict) -> dict[str, list[str]]:
    """For each stage, the modules it runs that none of its deps (file or folder) covers."""
    missing = {}
    for name, stage in dvc_yaml["stages"].items():
        command = stage["cmd"].split()[1]  # `cnnlab <command> --params ...`
        deps = [ROOT / d for d in stage["deps"] if d.startswith("src/")]
        files = closure("cnnlab.cli", f"cnnlab.stages.{command}")
        gaps = sorted(str(f.relative_to(ROOT)) for f in files
                      if is_code(f) and not any(f == d or d in f.parents for d in deps))
        if gaps:
            missing[name] = gaps
    return missing


def test_every_stage_depends_on_the_code_it_runs():
    assert uncovered(yaml.safe_load((ROOT / "dvc.yaml").read_text())) == {}


@pytest.mark.parametrize("stage, dep", [("evaluate", "src/cnnlab/visualize"), ("style", "src/cnnlab/models"),
                                        ("train", "src/cnnlab/paths.py")])
def test_a_missing_dep_is_found(stage, dep):
    """The check itself: drop one dep from a copy of dvc.yaml and it names the modules left uncovered."""
    dvc_yaml = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    dvc_yaml["stages"][stage]["deps"] = [d for d in dvc_yaml["stages"][stage]["deps"] if d != dep]
    assert any(m.startswith(dep) for m in uncovered(dvc_yaml)[stage])
