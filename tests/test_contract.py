"""The kernel contract: cpu.py and cuda.py of every family export the same functions."""
import ast
import inspect
import pathlib

import pytest

from nbdl.kernels import FAMILIES

KERNELS = pathlib.Path(__file__).parent.parent / "kernels"


def _public_functions(path):
    """name -> signature text of every public top-level def (parsed, nothing imported)."""
    tree = ast.parse(path.read_text())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_") and node.name != "ptx_signatures":
            out[node.name] = ast.unparse(node.args)
    return out


def test_every_family_folder_is_registered():
    folders = {p.name for p in KERNELS.iterdir() if p.is_dir() and (p / "cpu.py").exists()}
    assert folders == set(FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_cpu_and_cuda_export_the_same_functions(family):
    cpu = _public_functions(KERNELS / family / "cpu.py")
    cuda = _public_functions(KERNELS / family / "cuda.py")
    assert cpu, f"{family}/cpu.py exports no functions"
    only_cpu = sorted(set(cpu) - set(cuda))
    only_cuda = sorted(set(cuda) - set(cpu))
    assert not only_cpu and not only_cuda, f"{family}: only in cpu.py {only_cpu}, only in cuda.py {only_cuda}"
    differ = {n: (cpu[n], cuda[n]) for n in cpu if cpu[n] != cuda[n]}
    assert not differ, f"{family}: signatures differ: {differ}"


@pytest.mark.parametrize("family", FAMILIES)
def test_public_functions_are_documented(family):
    import importlib
    mod = importlib.import_module(f"nbdl.kernels.{family}.cpu")
    for name in _public_functions(KERNELS / family / "cpu.py"):
        assert inspect.getdoc(getattr(mod, name)), f"{family}.cpu.{name} has no docstring"
