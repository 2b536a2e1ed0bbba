"""The shape of the package: one home per setting, imports that point one way, a light producer."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import imgpipeline

PACKAGE = Path(imgpipeline.__file__).parent
README = PACKAGE.parent / "README.md"
VARIABLE = re.compile(r"\b(?:IMGPIPELINE|KAFKA|AWS)_[A-Z][A-Z0-9_]*\b")


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that a module imports anywhere in it (function-level imports too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + [base]).strip(".")
            # `from a import b` names the module a.b when b is one, else a.
            targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
    return {t for t in targets if t in known and t != name}


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def test_each_setting_is_named_in_one_module():
    homes = defaultdict(set)
    for name, path in modules().items():
        for variable in VARIABLE.findall(path.read_text()):
            homes[variable].add(name)
    assert len(homes) >= 20, sorted(homes)  # the search itself works
    assert {v: sorted(m) for v, m in homes.items() if len(m) > 1} == {}


def test_the_readme_configuration_table_is_the_code():
    from imgpipeline.cli.settings import all_rows, markdown_table

    text = README.read_text()
    start, end = "<!-- settings: `imgpipeline settings --markdown` -->\n", "<!-- end settings -->"
    block = text.split(start, 1)[1].split(end)[0]
    assert block == markdown_table()
    declared = {name for row in all_rows() for name in VARIABLE.findall(" ".join(map(str, row)))}
    read_in_code = {v for path in modules().values() for v in VARIABLE.findall(path.read_text())}
    # every variable the package reads has a row (the fork server's private hand-over excepted, and
    # renamed settings, read only to say their new names)
    from imgpipeline.defs.streaming.frames_sensor import RENAMED

    assert read_in_code - declared == {"IMGPIPELINE_FORK_SERVER_INSTANCE_REF", *RENAMED}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in edges:
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_function_level_imports_included():
    edges = graph()
    # the walk sees module-level and function-level imports
    assert edges["imgpipeline.cli.demo"] >= {"imgpipeline.cli.local", "imgpipeline.defs.resources"}
    assert cycles(edges) == []
    assert cycles({**edges, "imgpipeline.paths": {"imgpipeline.cli.demo"}}) != []  # and a cycle is found


def test_dependencies_point_one_way():
    """cli → defs → web, resources → vision / ingest; nothing below imports what stands above it."""
    above = {
        "imgpipeline.web": ("imgpipeline.cli", "imgpipeline.defs", "imgpipeline.definitions",
                            "imgpipeline.services", "imgpipeline.lib"),
        "imgpipeline.defs": ("imgpipeline.cli",),
        "imgpipeline.lib": ("imgpipeline.cli", "imgpipeline.defs", "imgpipeline.definitions"),
        "imgpipeline.services": ("imgpipeline.cli", "imgpipeline.defs", "imgpipeline.definitions"),
        "imgpipeline.resources": ("imgpipeline.cli", "imgpipeline.defs", "imgpipeline.definitions",
                                  "imgpipeline.services", "imgpipeline.lib"),
        "imgpipeline.ingest": ("imgpipeline.cli", "imgpipeline.defs", "imgpipeline.definitions",
                               "imgpipeline.resources", "imgpipeline.services", "imgpipeline.lib"),
        "imgpipeline.vision": ("imgpipeline.cli", "imgpipeline.defs", "imgpipeline.definitions",
                               "imgpipeline.resources", "imgpipeline.ingest", "imgpipeline.services"),
        "imgpipeline.paths": ("imgpipeline.",),
        "imgpipeline.redaction": ("imgpipeline.",),
    }
    wrong = [f"{module} imports {target}" for module, targets in graph().items() for target in targets
             for layer, forbidden in above.items()
             if (module == layer or module.startswith(layer + "."))
             and any(target == f or target.startswith(f if f.endswith(".") else f + ".") for f in forbidden)
             and target != "imgpipeline"]
    assert wrong == []


def loaded_after(code: str) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def test_produce_help_loads_no_dagster_and_produce_no_definitions():
    shown = loaded_after("from imgpipeline.cli.main import main\n"
                         "try:\n    main(['produce', '--help'])\nexcept SystemExit:\n    pass")
    assert "argparse" in shown and "imgpipeline.cli.main" in shown
    heavy = ("dagster.", "imgpipeline.defs", "imgpipeline.definitions")
    assert not {m for m in shown if m == "dagster" or m.startswith(heavy)}
    # What a real `produce` runs: the Kafka and storage resources, never the code location.
    running = loaded_after("import imgpipeline.cli.produce as p, imgpipeline.ingest.producer, "
                           "imgpipeline.ingest.sources, imgpipeline.resources")
    assert "imgpipeline.resources.kafka" in running
    assert not {m for m in running if m.startswith(("imgpipeline.defs", "imgpipeline.definitions"))}


def test_query_and_services_do_not_load_the_definitions():
    loaded = loaded_after("import imgpipeline.cli.query as q, imgpipeline.cli.local as l\n"
                          "import imgpipeline.defs.warehouse.sql, imgpipeline.services")
    assert "imgpipeline.defs.warehouse.sql" in loaded
    assert not {m for m in loaded if m.startswith("imgpipeline")
                and m.endswith((".assets", "definitions", ".partitions", "_sensor", ".detect_frames"))}


def test_the_contracts_document_names_every_column():
    from imgpipeline.defs.warehouse.tables import SCHEMAS

    text = (PACKAGE.parent / "docs" / "contracts.md").read_text()
    for table, schema in SCHEMAS.items():
        section = text.split(f"**{table}**", 1)[1].split("\n\n", 1)[0]
        assert re.findall(r"`(\w+)`", section) == schema.names, table


def test_every_asset_check_says_what_it_proves():
    from imgpipeline.definitions import defs

    specs = [spec for assets in defs.get_repository_def().assets_defs_by_key.values()
             for spec in assets.check_specs]
    assert len(specs) >= 7
    assert {spec.name: bool(spec.description and len(spec.description) > 30) for spec in specs} == {
        spec.name: True for spec in specs}


def engine_name_branches(tree: ast.AST, names: set[str]) -> list[int]:
    """Lines that single out engines by name: a comparison with (or membership in) string literals
    naming an engine, a dict keyed by them, a `case` on them."""

    def named(node) -> bool:
        if isinstance(node, ast.Constant):
            return node.value in names
        return isinstance(node, ast.Tuple | ast.List | ast.Set) and any(map(named, node.elts))

    def branches(node) -> bool:
        if isinstance(node, ast.Compare):
            return any(map(named, [node.left, *node.comparators]))
        if isinstance(node, ast.Dict):
            return any(key is not None and named(key) for key in node.keys)
        return isinstance(node, ast.MatchValue) and named(node.value)

    return [node.lineno for node in ast.walk(tree) if branches(node)]


def test_only_the_engines_package_names_engines_in_branches():
    """What differs between engines is each engine's own module: nothing else compares an engine's
    name with a literal, so a new engine needs no branch elsewhere."""
    from imgpipeline.vision import engines

    names = set(engines.names())
    home = PACKAGE / "vision" / "engines"
    found = {name: lines for name, path in modules().items() if home not in path.parents
             and (lines := engine_name_branches(ast.parse(path.read_text()), names))}
    assert found == {}
    # The scan sees each kind of branch.
    branches = ('engine == "opencv"', 'engine in ("noop", "opencv")', '{"noop": 1}.get(engine)',
                'match engine:\n    case "openvino":\n        pass')
    assert all(engine_name_branches(ast.parse(code), names) for code in branches)
    assert engine_name_branches(ast.parse('engine == configured or engine == "tensorrt"'), names) == []
