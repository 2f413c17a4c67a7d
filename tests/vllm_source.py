"""Which modules vLLM takes LoRA on, derived from a vLLM source tree by reading its model files (no vLLM import).

An independent check of the hand-written rows of ``hubmerge.serving_modules.ARCHITECTURES``: vLLM's
``expected_lora_modules`` is the last name of every linear layer (``LinearBase``: the parallel linears
and ``GateLinear``) of the model, with ``packed_modules_mapping`` expanded, plus the keys of
``embedding_modules`` (``vllm/lora/utils.py: get_supported_lora_modules``,
``vllm/lora/worker_manager.py: _load_adapter``). This reads the same things statically with ``ast``:
the class (and its bases, followed through the models package's imports), its two mappings and
``SupportsLoRA``, and every ``self.NAME = <linear>(...)`` of the classes the model builds (the model classes its
classes name, followed through the package's imports).
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

LINEARS = {
    "QKVParallelLinear", "MergedColumnParallelLinear", "RowParallelLinear", "ColumnParallelLinear",
    "ReplicatedLinear", "GateLinear",
}  # fmt: skip


@functools.cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))


def _imports(models: Path, tree: ast.Module) -> dict[str, Path]:
    """Names imported from other model files of the package: name → file."""
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            module = node.module.removeprefix("vllm.model_executor.models.") if node.level == 0 else node.module
            path = models / f"{module}.py"
            if (node.level == 1 or node.module.startswith("vllm.model_executor.models.")) and path.is_file():
                found.update({alias.asname or alias.name: path for alias in node.names})
    return found


def _class(models: Path, path: Path, name: str) -> tuple[ast.ClassDef, Path]:
    tree = _tree(path)
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node, path
    return _class(models, _imports(models, tree)[name], name)


def _mro(models: Path, path: Path, name: str) -> list[tuple[ast.ClassDef, Path]]:
    """The class and its bases that are model classes of the package, nearest first."""
    node, where = _class(models, path, name)
    chain = [(node, where)]
    for base in node.bases:
        if isinstance(base, ast.Name):
            try:
                chain += _mro(models, where, base.id)
            except KeyError:  # a base from outside the models package (nn.Module, mixins)
                continue
    return chain


def _attribute(chain, attr: str):
    for node, _ in chain:
        for item in node.body:
            targets = (
                item.targets
                if isinstance(item, ast.Assign)
                else [item.target]
                if isinstance(item, ast.AnnAssign)
                else []
            )
            if any(isinstance(t, ast.Name) and t.id == attr for t in targets) and item.value is not None:
                return ast.literal_eval(item.value)
    return {}


def _linear_names(models: Path, chain) -> set[str]:
    """``self.NAME = <linear>(...)`` in the classes the model builds: its MRO, and every model class their
    bodies name, followed through the package's imports."""
    seen: set[tuple[Path, str]] = set()
    todo = [(where, node.name) for node, where in chain]
    names: set[str] = set()
    while todo:
        path, name = todo.pop()
        try:
            node, where = _class(models, path, name)
        except KeyError:
            continue
        if (where, name) in seen:
            continue
        seen.add((where, name))
        local = {n.name for n in _tree(where).body if isinstance(n, ast.ClassDef)}
        imported = _imports(models, _tree(where))
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name) and (sub.id in local or sub.id in imported) and sub.id != name:
                todo.append((where, sub.id))
            if isinstance(sub, ast.Assign) and isinstance(sub.value, ast.Call):
                func = sub.value.func
                called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
                if called in LINEARS:
                    names.update(t.attr for t in sub.targets if isinstance(t, ast.Attribute))
    return names


def lora_modules(vllm_root: Path, file: str, class_name: str) -> tuple[bool, set[str]]:
    """Whether vLLM's ``class_name`` (in ``vllm/model_executor/models/<file>``) takes LoRA, and on which modules."""
    models = vllm_root / "vllm" / "model_executor" / "models"
    chain = _mro(models, models / file, class_name)
    supports = any(isinstance(b, ast.Name) and b.id == "SupportsLoRA" for node, _ in chain for b in node.bases)
    packed = _attribute(chain, "packed_modules_mapping")
    embedding = _attribute(chain, "embedding_modules")
    expected = set()
    for name in _linear_names(models, chain) | set(embedding):
        expected.update(packed.get(name, [name]))
    return supports, expected
