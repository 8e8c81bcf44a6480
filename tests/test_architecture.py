"""The package's shape: imports point down the layers, nothing forms a cycle, no module uses
another module's private names, MLflow and Optuna stay in the layers that track, and modules and
functions stay small. Read from the AST of every module, function-local imports included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "nbnet"

#: Lowest first. A module may import its own layer or any layer below it.
LAYERS = (
    ("base", ("nbnet.errors", "nbnet.version", "nbnet._sys")),
    ("kernels", ("nbnet.kernels",)),
    ("core", ("nbnet.model", "nbnet.optim", "nbnet.io")),
    ("data", ("nbnet.data", "nbnet.metrics")),
    ("nn", ("nbnet.nn",)),
    ("viz", ("nbnet.viz",)),
    ("experiment", ("nbnet.experiment", "nbnet.tracking")),
    ("ops", ("nbnet.ops",)),
    ("top", ("nbnet", "nbnet.cli", "nbnet.__main__", "nbnet.mlflow", "nbnet.optuna")),
)
TRACKING_LAYERS = ("experiment", "ops", "top")  # the only ones that may import mlflow or optuna
#: Third-party modules heavy enough to import on first use (start-up time), inside a function.
HEAVY = ("mlflow", "optuna", "matplotlib", "numba.cuda", "sklearn", "scipy", "pandas", "pyarrow", "psutil",
         "PIL", "threadpoolctl", "yaml", "sqlalchemy", "psycopg", "pynvml", "mkl", "torch", "jax")
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 60


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PKG.rglob("*.py"))}
TREES = {name: ast.parse(p.read_text(), filename=str(p)) for name, p in MODULES.items()}


def layer_of(module: str) -> int:
    best, found = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for pre in prefixes:
            if (module == pre or module.startswith(pre + ".")) and len(pre) > best:
                best, found = len(pre), i
    assert found is not None, f"{module} is in no layer; add it to LAYERS"
    return found


def resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if MODULES[module].name != "__init__.py":
        base = base[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports(module: str):
    """(line, imported module, function-local?) for every import in ``module``; ``from P import x``
    counts as an import of ``P.x`` when that is a module of nbnet, else of ``P``."""
    tree = TREES[module]
    local = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name, id(node) in local
        elif isinstance(node, ast.ImportFrom):
            target = resolve(module, node)
            for a in node.names:
                sub = f"{target}.{a.name}"
                yield node.lineno, sub if sub in MODULES else target, id(node) in local


def own(name: str) -> bool:
    return name == "nbnet" or name.startswith("nbnet.")


def graph() -> dict[str, set[str]]:
    return {m: {t for _, t, _ in imports(m) if own(t) and t in MODULES and t != m} for m in MODULES}


def test_imports_point_down_the_layers():
    upward = [f"{m}:{line} imports {t} ({LAYERS[layer_of(t)][0]} above {LAYERS[layer_of(m)][0]})"
              for m in MODULES for line, t, _ in imports(m)
              if own(t) and t in MODULES and layer_of(t) > layer_of(m)]
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    g = graph()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_a_package_never_imports_its_own_init():
    bad = [f"{m} imports its package {t}" for m in MODULES for _, t, _ in imports(m)
           if MODULES[m].name != "__init__.py" and MODULES.get(t, Path()).name == "__init__.py"
           and m.startswith(t + ".")]
    assert not bad, "\n".join(bad)


def test_mlflow_and_optuna_only_where_runs_are_tracked():
    bad = [f"{m}:{line} imports {t}" for m in MODULES for line, t, _ in imports(m)
           if t.split(".")[0] in ("mlflow", "optuna") and LAYERS[layer_of(m)][0] not in TRACKING_LAYERS]
    assert not bad, "\n".join(bad)


def heavy_import(m: str, target: str) -> bool:
    """A heavy third-party module, or (from the top layer: the CLI and ``nbnet.load``) a module of
    the layers that import MLflow and Optuna: ``nbnet --help`` and a bad experiment file answer
    without loading them."""
    if not own(target):
        return any(target == h or target.startswith(h + ".") for h in HEAVY)
    return LAYERS[layer_of(m)][0] == "top" and LAYERS[layer_of(target)][0] in ("experiment", "ops")


def test_function_local_imports_are_heavy_and_say_so():
    bad = []
    for m, p in MODULES.items():
        src = p.read_text().splitlines()
        for line, t, local in imports(m):
            if not local:
                continue
            said = "#" in src[line - 1] or src[line - 2].strip().startswith("#")
            if not heavy_import(m, t):
                bad.append(f"{m}:{line} imports {t} inside a function")
            elif not said:
                bad.append(f"{m}:{line} imports {t} inside a function without a comment saying why")
    assert not bad, "\n".join(bad)


def module_aliases(m: str) -> dict[str, str]:
    """Local names bound to nbnet modules in ``m`` (``import nbnet.x as y``, ``from nbnet import x``)."""
    out = {}
    for node in ast.walk(TREES[m]):
        if isinstance(node, ast.Import):
            out.update({a.asname: a.name for a in node.names if a.asname and a.name in MODULES})
        elif isinstance(node, ast.ImportFrom):
            target = resolve(m, node)
            out.update({a.asname or a.name: f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES})
    return out


def private_attributes() -> dict[str, str]:
    """``_name`` -> module, for every ``self._name = ...`` and every ``def _name`` in a class of nbnet."""
    out = {}
    for m, tree in TREES.items():
        for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
            for f in cls.body:
                if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) and f.name.startswith("_") \
                        and not f.name.startswith("__"):
                    out.setdefault(f.name, m)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and isinstance(node.value, ast.Name)
                    and node.value.id == "self" and node.attr.startswith("_") and not node.attr.startswith("__")):
                out.setdefault(node.attr, m)
    return out


def test_no_private_names_of_other_modules():
    owners = private_attributes()
    bad = []
    for m, tree in TREES.items():
        aliases = module_aliases(m)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and own(resolve(m, node)):
                bad += [f"{m}:{node.lineno} imports {resolve(m, node)}.{a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]
            elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                base = node.value.id if isinstance(node.value, ast.Name) else None
                if base in aliases:
                    bad.append(f"{m}:{node.lineno} uses {aliases[base]}.{node.attr}")
                elif base not in ("self", "cls") and owners.get(node.attr, m) != m:
                    bad.append(f"{m}:{node.lineno} uses {node.attr} of an object of {owners[node.attr]}")
    assert not bad, "\n".join(sorted(set(bad)))


def test_modules_are_small():
    big = [f"{m}: {n} lines" for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    assert not big, "\n".join(big)


def _kernel_loop(m: str, f: ast.FunctionDef) -> bool:
    """A compiled kernel whose length its docstring or a comment explains (one fused loop)."""
    compiled = any("jit" in ast.unparse(d) for d in f.decorator_list)
    return m.startswith("nbnet.kernels.") and compiled


def test_functions_are_short():
    long = []
    for m, tree in TREES.items():
        for f in ast.walk(tree):
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = f.end_lineno - f.lineno + 1
                if n > MAX_FUNCTION_LINES and not _kernel_loop(m, f):
                    long.append(f"{m}.{f.name}: {n} lines")
    assert not long, "\n".join(long)


@pytest.mark.parametrize("module", [m for m in MODULES if m.startswith("nbnet.kernels.")])
def test_long_kernel_loops_say_why(module):
    src = MODULES[module].read_text().splitlines()
    silent = []
    for f in ast.walk(TREES[module]):
        if isinstance(f, ast.FunctionDef) and f.end_lineno - f.lineno + 1 > MAX_FUNCTION_LINES:
            doc = ast.get_docstring(f) or ""
            head = "\n".join(src[f.lineno - 4: f.lineno + 2])
            if "long" not in (doc + head).lower():
                silent.append(f.name)
    assert not silent, f"long kernels without a word on why they are long: {silent}"
