"""sharpcam's imports: no torch anywhere, no import cycles, and a light `sharpcam --help`."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import sharpcam

PACKAGE = Path(sharpcam.__file__).parent
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__main__")


def test_nothing_in_sharpcam_imports_torch():
    code = ("import importlib, sys\n"
            f"for name in {MODULES!r}:\n"
            "    importlib.import_module('sharpcam' if name == '__init__' else 'sharpcam.' + name)\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_help_runs_without_torch_opencv_or_onnxruntime():
    # The imports cli.py keeps inside functions exist for this: --help answers at once.
    code = ("import sys\nfrom sharpcam.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = sorted({'torch', 'cv2', 'onnxruntime'} & set(sys.modules))\n"
            "assert not heavy, heavy\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "--demo" in result.stdout and "space on/off" in result.stdout


def package_imports(source: str, module: str) -> set:
    """The sharpcam modules that ``module``'s source imports, anywhere in the file (an
    import inside a function is as much a dependency as one at the top)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[1] if "." in alias.name else "__init__"
                      for alias in node.names if alias.name.split(".")[0] == "sharpcam"}
        elif isinstance(node, ast.ImportFrom):
            if node.level > 1:
                raise AssertionError(f"{module}: an import from above the package (level {node.level})")
            if node.level == 0 and (node.module or "").split(".")[0] != "sharpcam":
                continue
            # The part of the dotted name below the package: "cli" in `.cli`, `sharpcam.cli`.
            below = (node.module or "").split(".")[1 if node.level == 0 else 0:]
            if below and below[0]:
                found.add(below[0])
            else:  # `from . import x`: x is a module of the package or a name in __init__
                found |= {a.name if (PACKAGE / f"{a.name}.py").exists() else "__init__"
                          for a in node.names}
    found.discard(module)
    return found


def import_graph() -> dict:
    return {name: package_imports((PACKAGE / f"{name}.py").read_text(), name)
            for name in MODULES}


def find_cycle(graph: dict):
    """One import cycle as a list of module names, or None."""
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt, path + [nxt])
                if cycle:
                    return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [start])
            if cycle:
                return cycle
    return None


def test_no_two_sharpcam_modules_import_each_other():
    graph = import_graph()
    assert graph["cli"] and graph["bench"], graph  # the walk sees imports at all
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_cycles():
    # Guards the test above: each of these spellings of an import makes a cycle it must see.
    real = import_graph()
    for spelling in ("from .cli import main", "from . import cli", "import sharpcam.cli",
                     "from sharpcam.cli import main", "def f():\n    from .cli import main"):
        graph = dict(real)
        graph["bench"] = package_imports(spelling, "bench")
        graph["cli"] = {"bench"}
        assert find_cycle(graph) in (["bench", "cli", "bench"], ["cli", "bench", "cli"]), spelling
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_default_model_path_is_inside_the_package():
    assert sharpcam.DEFAULT_MODEL == os.path.join(os.path.dirname(sharpcam.__file__), "assets", "student.onnx")
    assert os.path.getsize(sharpcam.DEMO_IMAGE) <= 200 * 1024
