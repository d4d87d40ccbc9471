"""The layers, read from the imports of every module (lazy ones and type-only ones included):

- the core (``bot/``) imports no platform SDK and no torch, and only the composition root (``bot/app.py``) imports
  upward, into ``adapters/`` and ``inference/``;
- adapters and engines never import each other;
- no import circle anywhere (a graph over all modules of the three packages, of the imports that run);
- SQL stays in the store: no module outside ``bot/store/`` imports SQLAlchemy;
- the trainer, a subprocess, is started through its declared entry point (``[project.scripts]``), which the root
  names: no ``python -m inference...`` hidden in a string elsewhere, no PYTHONPATH tricks.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("bot", "adapters", "inference")
OUTER = ("adapters", "inference")
FORBIDDEN_IN_CORE = ("discord", "slack_bolt", "slack_sdk", "torch", "transformers", "peft", "accelerate")
COMPOSITION_ROOT = "bot/app.py"
TRAINER_SCRIPT = "hanbot-train"
STORE = "bot/store"
DATABASE_LIBRARIES = ("sqlalchemy", "alembic", "psycopg", "sqlite3")


def imported_modules(path: Path) -> set[str]:
    """Absolute module names imported anywhere in the file (``from . import x`` resolved against its package)."""
    return {target for target, _ in _imports(path, _module_name(path))}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str, *, type_only: bool = True) -> Iterable[tuple[str, str | None]]:
    """(module, name) pairs: ``import a.b`` is ("a.b", None), ``from a import b`` is ("a", "b"). Lazy imports inside
    functions count; imports under ``if TYPE_CHECKING:`` count unless ``type_only`` is off (they never run)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = (
        set() if type_only else {id(n) for block in _type_checking_blocks(tree) for n in ast.walk(block)}
    )
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                yield base, alias.name


def _type_checking_blocks(tree: ast.AST) -> list[ast.stmt]:
    return [
        stmt
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for stmt in node.body
    ]


def project_modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def import_graph(*, type_only: bool = False) -> dict[str, set[str]]:
    """module -> the project modules it imports when it runs (``from pkg import sub`` points at the submodule);
    with ``type_only`` also the imports only a type checker follows."""
    modules = project_modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for base, item in _imports(path, name, type_only=type_only):
            target = f"{base}.{item}" if item and f"{base}.{item}" in modules else base
            if target in modules and target != name:
                graph[name].add(target)
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def upward_imports() -> list[str]:
    """Every import from the core into an outer layer, as "bot/x.py imports inference.y"."""
    found = []
    for path in sorted((REPO / "bot").rglob("*.py")):
        for module in sorted(imported_modules(path)):
            if module.split(".")[0] in OUTER:
                found.append(f"{path.relative_to(REPO).as_posix()} imports {module}")
    return found


def offenders(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in sorted((REPO / folder).rglob("*.py")):
        for module in imported_modules(path):
            if module.split(".")[0] in forbidden:
                found.append(f"{path.relative_to(REPO).as_posix()} imports {module}")
    return found


def declared_scripts() -> dict[str, str]:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    return dict(pyproject["project"]["scripts"])


# ----- the tests


def test_only_the_composition_root_imports_upward() -> None:
    upward = upward_imports()
    print("\nupward imports (core -> adapters/inference):")
    for line in upward:
        print("  " + line)
    assert upward, "the root wires the adapters and the engines: it must import them"
    assert {line.split(" imports ")[0] for line in upward} == {COMPOSITION_ROOT}


def test_core_imports_no_platform_sdk_and_no_torch() -> None:
    assert offenders("bot", FORBIDDEN_IN_CORE) == []


def test_only_the_store_speaks_sql() -> None:
    """Persistence is behind the store's ports: every other module of the three packages imports no database
    library (lazy imports included)."""
    checked = [path for pkg in PACKAGES for path in sorted((REPO / pkg).rglob("*.py"))]
    outside = [path for path in checked if not path.relative_to(REPO).as_posix().startswith(STORE + "/")]
    print(f"\nmodules checked for database imports (outside {STORE}/): {len(outside)}")
    for path in outside:
        print("  " + path.relative_to(REPO).as_posix())
    found = [
        f"{path.relative_to(REPO).as_posix()} imports {module}"
        for path in outside
        for module in sorted(imported_modules(path))
        if module.split(".")[0] in DATABASE_LIBRARIES
    ]
    assert len(outside) > 100 and found == []
    inside = [path for path in checked if path not in outside]
    assert any(
        "sqlalchemy" in imported_modules(path) for path in inside
    )  # the check sees an import where one is


def test_adapters_reach_the_store_only_through_ports() -> None:
    """An adapter gets the narrow ports it uses (bot/ports.py: DeliveryLog, ConversationPresence, FeedbackRecorder),
    never the store itself."""
    found = [
        f"{path.relative_to(REPO).as_posix()} imports {module}"
        for path in sorted((REPO / "adapters").rglob("*.py"))
        for module in sorted(imported_modules(path))
        if module == "bot.store" or module.startswith("bot.store.")
    ]
    assert found == []
    assert "bot.store.conversations" in imported_modules(
        REPO / "bot" / "chat.py"
    )  # the check sees such an import


def test_adapters_do_not_import_inference_and_inference_does_not_import_adapters() -> None:
    assert offenders("adapters", ("inference", "torch", "transformers")) == []
    assert offenders("inference", ("adapters", "discord", "slack_bolt", "slack_sdk")) == []


def test_no_import_circle_anywhere() -> None:
    """No circle among the imports that run, lazy ones included (the engine and tensor parallelism had one), nor
    among the type-only ones (the ports and the command registry had one: the platform port is ``bot.platform``)."""
    graph = import_graph()
    assert len(graph) > 100 and sum(len(targets) for targets in graph.values()) > 300  # the whole project
    assert import_cycles(graph) == []
    assert import_cycles(import_graph(type_only=True)) == []


def test_the_trainer_is_started_through_its_declared_entry_point() -> None:
    from bot.app import TRAINER_MODULE, trainer_launch

    scripts = declared_scripts()
    assert scripts["hanbot"] == "bot.cli:main"
    module, _, function = scripts[TRAINER_SCRIPT].partition(":")
    assert module == TRAINER_MODULE and function == "main"
    tree = ast.parse(project_modules()[module].read_text(encoding="utf-8"))
    assert any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body)
    launch = trainer_launch("/opt/python")
    assert list(launch.argv) == ["/opt/python", "-m", TRAINER_MODULE]
    assert (launch.cwd / "inference" / "finetune" / "train.py").is_file()
    # nothing else in the core names an outer module in a string (a hidden `-m` dependency) or edits PYTHONPATH
    for path in sorted((REPO / "bot").rglob("*.py")):
        if path.relative_to(REPO).as_posix() == COMPOSITION_ROOT:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert not node.value.startswith(("inference.", "adapters.")), (path, node.value)
                assert node.value != "PYTHONPATH", path


def test_the_checks_themselves_see_imports_and_circles(tmp_path: Path) -> None:
    sample = REPO / "bot" / "app.py"
    assert {"inference.remote_engine", "adapters.console", "bot.chat"} <= imported_modules(sample)
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []
    graph = import_graph()
    assert "inference.fast.decoder" in graph["inference.decoders"] or any(
        t.startswith("inference.fast") for t in graph["inference.decoders"]
    )
