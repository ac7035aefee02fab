import ast
import re
from pathlib import Path

import modelserve
from modelserve._native import core


def test_version_has_one_source():
    text = (Path(modelserve.__file__).parent / "_version.py").read_text()
    (declared,) = re.findall(r'__version__ = "([^"]+)"', text)
    assert modelserve.__version__ == declared
    assert core.__version__ == declared  # compiled in by CMake from the same file


def test_cuda_queries_answer_without_a_gpu():
    count = modelserve.cuda.device_count()
    assert count >= 0
    assert modelserve.cuda.is_available() == (count > 0)
    assert isinstance(modelserve.cuda.compiled(), bool)
    if modelserve.cuda.compiled():
        assert re.fullmatch(r"\d+\.\d+", modelserve.cuda.runtime_version())


def test_status_table_matches_the_core():
    for name, code in core.STATUS_CODES.items():
        if name == "OK":
            continue
        err = modelserve.errors.from_status(code, "m")
        assert err.status == name
        assert err.code == code
    assert modelserve.errors.from_status(4, "x").http_status == 429
    assert modelserve.errors.from_status(5, "x").grpc_code == "DEADLINE_EXCEEDED"
    assert isinstance(modelserve.errors.from_status(1, "x"), ValueError)


def _stub_names(body: list[ast.stmt]) -> dict[str, ast.stmt]:
    """What a stub body declares, by name: functions, classes and annotated or assigned names
    (imports declare nothing the module exports)."""
    out: dict[str, ast.stmt] = {}
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out[node.name] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out[node.target.id] = node
        elif isinstance(node, ast.Assign):
            out.update({t.id: node for t in node.targets if isinstance(t, ast.Name)})
    return out


def _real_names(obj: object, public_only: bool) -> set[str]:
    names = {n for n in dir(obj) if not (n.startswith("__") and n.endswith("__"))}
    return {n for n in names if not n.startswith("_")} if public_only else names


def test_the_core_stub_names_what_core_exports():
    """_core.pyi against the built module, both ways: its top level (with __version__), each
    class's public members (with those its stub bases declare) and each submodule's names (a
    submodule is a ModuleType subclass in the stub, named by a module-level annotation)."""
    import types

    stub = ast.parse((Path(modelserve.__file__).parent / "_core.pyi").read_text())
    top = _stub_names(stub.body)
    modules = {n for n, node in top.items() if isinstance(node, ast.ClassDef)
               and any(isinstance(b, ast.Name) and b.id == "ModuleType" for b in node.bases)}
    problems: list[str] = []

    def compare(where: str, declared: set[str], real: set[str]) -> None:
        if real - declared:
            problems.append(f"{where}: _core exports {sorted(real - declared)}, the stub does not name them")
        if declared - real:
            problems.append(f"{where}: the stub names {sorted(declared - real)}, _core does not export them")

    def members(cls: ast.ClassDef, scope: dict[str, ast.stmt]) -> set[str]:
        names = {n for n in _stub_names(cls.body) if not n.startswith("_")}
        for base in cls.bases:
            if isinstance(base, ast.Name) and isinstance(scope.get(base.id), ast.ClassDef):
                names |= members(scope[base.id], scope)
        return names

    def compare_classes(where: str, scope: dict[str, ast.stmt], real_scope: object) -> None:
        for name, node in scope.items():
            real = getattr(real_scope, name, None)
            if isinstance(node, ast.ClassDef) and name not in modules and isinstance(real, type):
                compare(f"{where}.{name}", members(node, scope), _real_names(real, public_only=True))

    submodules = {node.target.id: top[node.annotation.id] for node in top.values()
                  if isinstance(node, ast.AnnAssign) and isinstance(node.annotation, ast.Name)
                  and node.annotation.id in modules}
    declared_top = {n for n in top if n not in modules and not (n.startswith("__") and n != "__version__")}
    version = {"__version__"} if hasattr(core, "__version__") else set()
    compare("_core", declared_top, _real_names(core, public_only=False) | version)
    compare_classes("_core", top, core)
    for name, cls in submodules.items():
        real = getattr(core, name, None)
        if not isinstance(real, types.ModuleType):
            problems.append(f"_core.{name}: the stub declares a submodule, _core has {type(real).__name__}")
            continue
        scope = {n: node for n, node in _stub_names(cls.body).items() if not n.startswith("__")}
        compare(f"_core.{name}", set(scope), _real_names(real, public_only=False))
        compare_classes(f"_core.{name}", scope, real)
    assert not problems, "_core.pyi is out of date with the built module:\n" + "\n".join(problems)


def test_import_modelserve_is_light_and_its_names_still_resolve():
    """The package imports its parts on first use (PEP 562): a process-instance worker does not
    pay for the servers' dependencies; every public name and subpackage still resolves."""
    import subprocess
    import sys

    code = (
        "import sys, modelserve\n"
        "heavy = sorted(m for m in ('pydantic', 'grpc', 'starlette', 'prometheus_client') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
        "assert modelserve.repository.validate_repository and modelserve.engine.ModelEngine\n"
        "assert modelserve.Runtime and modelserve.ModelConfig and modelserve.generation.SamplingParams\n"
        "assert set(modelserve.__all__) <= set(dir(modelserve))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
