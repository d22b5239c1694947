"""The package's structure: sub-packages in one order, nothing imports upward, no import
cycles, and the torch-free core works on a machine without torch.

Sub-packages, bottom up (docs/architecture.md): ``detect.common`` < ``detect.data`` <
``detect.demo`` < ``detect.model`` < ``detect.scoring`` < ``detect.inference`` <
``detect.deploy`` < ``detect.line`` < ``detect.checks`` < ``detect.station`` < ``detect.training`` < the commands (``detect/train.py``, ``eval.py``, ... each
``main(argv) -> int``). A module may import modules of its own sub-package or of one below.

Across that order runs a second rule: the modules in :data:`TORCH` may import torch; every
other module is core and may import neither torch nor a torch module. Imports inside
functions count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import NO_TORCH

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "detect"

ORDER = ("detect.common", "detect.data", "detect.demo", "detect.model", "detect.scoring", "detect.inference",
         "detect.deploy", "detect.line", "detect.checks", "detect.station", "detect.training")
COMMANDS = ("detect.train", "detect.eval", "detect.check_xml", "detect.make_demo_data", "detect.predict",
            "detect.export", "detect.convert", "detect.anomaly", "detect.audit", "detect.benchmark",
            "detect.__main__")  # the front door: python -m detect COMMAND
# The modules that may import torch (and those that import them); the rest is the core.
TORCH = frozenset({
    "detect.common.device",
    "detect.data.dataset",
    "detect.data.tensors",
    "detect.scoring.corruptions",  # albumentations, not torch: the robustness report's corruptions
    "detect.model.build",
    "detect.model.roi_align",
    "detect.model.checkpoint",
    "detect.model.anomaly",
    "detect.model.verdict",
    "detect.inference.torch_runtime",
    "detect.inference.loader",
    "detect.inference.evaluate",  # the loader, inside model_run: scoring a predictions file stays torch-free
    "detect.deploy.onnx_export",
    "detect.deploy.variants",
    "detect.deploy.benchmark",
    "detect.checks.audit_session",  # the loader and a checkpoint's metadata, lazily
    "detect.training",
    "detect.training.config",
    "detect.training.data_prep",
    "detect.training.stop",
    "detect.training.budget",
    "detect.training.trainer",
    "detect.training.run_state",
    "detect.training.resume",
    "detect.training.banner",
    "detect.training.engine",
    "detect.training.run_folder",
    "detect.training.distributed",
    "detect.training.balance",
    "detect.training.verdict",
    "detect.training.anomaly",
})
TORCH_PACKAGES = {"torch", "torchvision", "albumentations"}


def rank(module: str) -> int:
    """Where a module stands in :data:`ORDER` (the commands above every sub-package)."""
    if module == "detect":
        return -1
    for i, package in enumerate(ORDER):
        if module == package or module.startswith(package + "."):
            return i
    if module in COMMANDS:
        return len(ORDER)
    raise KeyError(module)


def is_core(module: str) -> bool:
    return module not in TORCH and module not in COMMANDS


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path) -> set[str]:
    """Every module named by an import statement anywhere in the file (functions included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # "from detect import checks" names the module detect.checks
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def project_imports(path: Path, known: set[str]) -> set[str]:
    out = set()
    for name in imports_of(path):
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != "detect":
            out.add(name)
    return out


def test_every_module_has_a_place() -> None:
    homeless = []
    for name in modules():
        try:
            rank(name)
        except KeyError:
            homeless.append(name)
    assert not homeless, f"put these modules in a sub-package of ORDER, or name them in COMMANDS: {homeless}"
    gone = sorted(TORCH - set(modules()))
    assert not gone, f"TORCH names modules that no longer exist: {gone}"


def test_nothing_imports_upward() -> None:
    mods = modules()
    upward = []
    for name, path in mods.items():
        for dep in project_imports(path, set(mods)):
            if rank(dep) > rank(name):
                upward.append(f"{name} imports {dep}, which sits above it")
            elif is_core(name) and not is_core(dep):
                upward.append(f"{name} (core) imports {dep} (torch)")
    assert not upward, "\n".join(upward)


def test_core_names_no_torch_package() -> None:
    offenders = []
    for name, path in modules().items():
        if is_core(name):
            heavy = {m.split(".")[0] for m in imports_of(path)} & TORCH_PACKAGES
            if heavy:
                offenders.append(f"{name} imports {sorted(heavy)}")
    assert not offenders, "\n".join(offenders)


def test_no_import_cycles() -> None:
    mods = modules()
    graph = {name: project_imports(path, set(mods)) - {name} for name, path in mods.items()}
    # A package's __init__ re-exporting its own modules is not a cycle with them.
    for name in graph:
        if name in mods and mods[name].name == "__init__.py":
            graph[name] = {d for d in graph[name] if not d.startswith(name + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_layer_check_sees_a_planted_upward_import(tmp_path: Path) -> None:
    """The checks above are not vacuous: an upward import and a cycle are found."""
    (tmp_path / "a.py").write_text("def f():\n    from detect.training.trainer import train\n")
    assert "detect.training.trainer" in project_imports(tmp_path / "a.py", set(modules()))
    (tmp_path / "b.py").write_text("from detect import checks\nimport torch.nn\n")
    assert {"detect.checks"} == project_imports(tmp_path / "b.py", set(modules()))
    assert "torch" in {m.split(".")[0] for m in imports_of(tmp_path / "b.py")}


def _run(code: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=cwd or REPO, timeout=300)


def test_importing_the_core_does_not_import_torch() -> None:
    core = sorted(m for m in modules() if is_core(m))
    done = _run(f"""
        import importlib, json, sys
        for name in {core!r}:
            importlib.import_module(name)
        print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(TORCH_PACKAGES)!r})))
    """)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def test_scoring_predictions_and_checking_annotations_work_without_torch(tmp_path: Path) -> None:
    from conftest import make_devkit

    data = make_devkit(tmp_path / "data", n=6)
    preds = tmp_path / "p.json"
    preds.write_text(json.dumps([{"image": "img_000.jpg", "label": "Lata", "score": 0.9, "bbox": [1, 1, 20, 20]}]))
    done = _run(NO_TORCH + f"""
import detect.check_xml, detect.eval
code_eval = detect.eval.main(["--data", {str(data)!r}, "--predictions", {str(preds)!r}, "--no-progress"])
code_check = detect.check_xml.main([{str(data)!r}, "--classes", {str(data / 'classes.txt')!r}])
assert 'torch' not in sys.modules
print("exit", code_eval, code_check)
""")
    assert done.returncode == 0, done.stderr
    assert "exit 0 0" in done.stdout, done.stdout + done.stderr
    assert "VOC mAP50" in done.stdout and "checked" in done.stdout
    assert "anchor fit (mobilenet, input 640, 9 anchors/location)" in done.stdout  # VOC6xx ran, torch-free
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("module", COMMANDS)
def test_each_command_has_main_argv_returning_int(module: str) -> None:
    import importlib
    import inspect

    main = importlib.import_module(module).main
    assert list(inspect.signature(main).parameters) == ["argv"]
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
