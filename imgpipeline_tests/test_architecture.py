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
CONFIGURATION_DOC = PACKAGE.parent / "docs" / "configuration.md"
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


def test_the_configuration_doc_table_is_the_code():
    from imgpipeline.cli.settings import all_rows, markdown_table

    text = CONFIGURATION_DOC.read_text()
    start, end = "<!-- settings: `imgpipeline settings --markdown` -->\n", "<!-- end settings -->"
    block = text.split(start, 1)[1].split(end)[0]
    assert block == markdown_table()
    declared = {name for row in all_rows() for name in VARIABLE.findall(" ".join(map(str, row)))}
    read_in_code = {v for path in modules().values() for v in VARIABLE.findall(path.read_text())}
    # every variable the package reads has a row (the fork server's private hand-over excepted, and
    # renamed settings, read only to say their new names)
    from imgpipeline.defs.streaming.batch_policy import RENAMED

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
    assert edges["imgpipeline.cli.demo"] >= {"imgpipeline.cli.local", "imgpipeline.configuration"}
    assert cycles(edges) == []
    assert cycles({**edges, "imgpipeline.paths": {"imgpipeline.cli.demo"}}) != []  # and a cycle is found


def test_dependencies_point_one_way():
    """cli → defs → web, resources → vision / ingest; nothing below imports what stands above it."""
    above = {
        # the settings tree stands above the code it configures, beside the code location
        "imgpipeline.configuration": ("imgpipeline.cli", "imgpipeline.definitions"),
        "imgpipeline.web": ("imgpipeline.cli", "imgpipeline.defs", "imgpipeline.definitions",
                            "imgpipeline.services", "imgpipeline.lib", "imgpipeline.configuration"),
        "imgpipeline.defs": ("imgpipeline.cli", "imgpipeline.configuration"),
        "imgpipeline.lib": ("imgpipeline.cli", "imgpipeline.defs", "imgpipeline.definitions",
                            "imgpipeline.configuration"),
        "imgpipeline.services": ("imgpipeline.cli", "imgpipeline.defs", "imgpipeline.definitions",
                                 "imgpipeline.configuration"),
        "imgpipeline.resources": ("imgpipeline.cli", "imgpipeline.defs", "imgpipeline.definitions",
                                  "imgpipeline.services", "imgpipeline.lib", "imgpipeline.configuration"),
        "imgpipeline.ingest": ("imgpipeline.cli", "imgpipeline.defs", "imgpipeline.definitions",
                               "imgpipeline.resources", "imgpipeline.services", "imgpipeline.lib",
                               "imgpipeline.configuration"),
        "imgpipeline.vision": ("imgpipeline.cli", "imgpipeline.defs", "imgpipeline.definitions",
                               "imgpipeline.resources", "imgpipeline.ingest", "imgpipeline.services",
                               "imgpipeline.configuration"),
        # the env files and the variables settings see stand on the folders alone
        "imgpipeline.environment": tuple(f"imgpipeline.{name}" for name in (
            "cli", "defs", "definitions", "web", "lib", "services", "resources", "ingest", "vision",
            "redaction", "durable")),
        "imgpipeline.paths": ("imgpipeline.",),
        "imgpipeline.durable": ("imgpipeline.",),
        "imgpipeline.redaction": ("imgpipeline.",),
    }
    edges = graph()
    assert set(above) - set(edges) == set()  # each layer named is a module of the package
    wrong = [f"{module} imports {target}" for module, targets in edges.items() for target in targets
             for layer, forbidden in above.items()
             if (module == layer or module.startswith(layer + "."))
             and any(target == f or target.startswith(f if f.endswith(".") else f + ".") for f in forbidden)
             and target != "imgpipeline"]
    assert wrong == []


# The domains of the code location in their order: each imports only those before it (alerts and
# reports are peers), and all stand on the shared modules of `defs/` (the table layer, the records core,
# partitions).
DOMAINS = {"streaming": 0, "warehouse": 1, "tracking": 2, "alerts": 3, "reports": 3, "retention": 4,
           "laboratory": 4}


def domain_of(module: str) -> str | None:
    parts = module.split(".")
    in_defs = len(parts) > 2 and parts[:2] == ["imgpipeline", "defs"]
    return parts[2] if in_defs and parts[2] in DOMAINS else None


def domain_order_breaches(edges: dict[str, set[str]]) -> list[str]:
    breaches = []
    for module, targets in edges.items():
        if module.startswith("imgpipeline.defs.") and domain_of(module) is None:
            # a shared module of defs/ stands below every domain
            breaches += [f"{module} imports {t}" for t in targets if domain_of(t) is not None]
        elif (own := domain_of(module)) is not None:
            breaches += [f"{module} imports {t}" for t in targets
                         if (other := domain_of(t)) is not None and other != own
                         and DOMAINS[other] >= DOMAINS[own]]
    return sorted(breaches)


def test_domains_import_only_earlier_domains():
    edges = graph()
    assert {domain_of(m) for m in edges} >= set(DOMAINS)  # every domain is seen
    assert domain_order_breaches(edges) == []
    # and a breach is found: the warehouse reaching into tracking, a table layer or the records core
    # reaching into a domain
    assert domain_order_breaches({"imgpipeline.defs.warehouse.assets": {"imgpipeline.defs.tracking.rows"},
                                  "imgpipeline.defs.tables": {"imgpipeline.defs.alerts.ledger"},
                                  "imgpipeline.defs.records.ledger": {"imgpipeline.defs.streaming.follow"},
                                  "imgpipeline.defs.alerts.assets": {"imgpipeline.defs.reports.assets"}}) == [
        "imgpipeline.defs.alerts.assets imports imgpipeline.defs.reports.assets",
        "imgpipeline.defs.records.ledger imports imgpipeline.defs.streaming.follow",
        "imgpipeline.defs.tables imports imgpipeline.defs.alerts.ledger",
        "imgpipeline.defs.warehouse.assets imports imgpipeline.defs.tracking.rows"]


def streaming_imports(edges: dict[str, set[str]]) -> list[str]:
    """Where a module of another domain imports the streaming domain."""
    return sorted(f"{module} imports {target}" for module, targets in edges.items()
                  if domain_of(module) not in (None, "streaming") for target in targets
                  if domain_of(target) == "streaming")


def test_no_other_domain_imports_streaming():
    """Streaming writes the landing records; the other domains read them through the records core
    (`defs/records/`), never through streaming."""
    edges = graph()
    assert "imgpipeline.defs.records" in edges  # the core is there
    assert streaming_imports(edges) == []
    # and such an import is found, whereas streaming's own imports and the core's are not its business
    assert streaming_imports({"imgpipeline.defs.alerts.live": {"imgpipeline.defs.streaming.landing"},
                              "imgpipeline.defs.streaming.follow": {"imgpipeline.defs.streaming.ledger"},
                              "imgpipeline.cli.status": {"imgpipeline.defs.streaming.health"}}) == [
        "imgpipeline.defs.alerts.live imports imgpipeline.defs.streaming.landing"]


def literal_asset_keys(path: Path) -> list[str]:
    """Where a module names an asset by a string literal: `dg.AssetKey("…")`, `AssetSpec("…")`,
    `AssetDep("…")`, `AssetSelection.assets("…")`, or a string in `deps=[…]`, `selection=[…]`,
    `asset=`, `asset_key=` or `key=`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        args = list(node.args) if name in ("AssetKey", "AssetSpec", "AssetDep", "assets") else []
        for keyword in node.keywords:
            if keyword.arg in ("deps", "selection", "asset", "asset_key", "key"):
                value = keyword.value
                args += list(value.elts) if isinstance(value, (ast.List, ast.Tuple, ast.Set)) else [value]
        found += [f"{path.name}:{arg.lineno} {arg.value!r}" for arg in args
                  if isinstance(arg, ast.Constant) and isinstance(arg.value, str)]
    return found


def test_asset_keys_are_declared_once():
    """Each asset key has one home, the table layer: a key mistyped in `deps` would load silently as an
    external asset, so the code location holds exactly the keys declared there."""
    from imgpipeline.definitions import defs
    from imgpipeline.defs.tables import ASSET_KEYS, model_key, redetections_key
    from imgpipeline.vision import models

    home = PACKAGE / "defs" / "tables" / "__init__.py"
    elsewhere = [hit for name, path in modules().items() if path != home and name.startswith("imgpipeline.")
                 for hit in literal_asset_keys(path)]
    assert elsewhere == []
    assert literal_asset_keys(home)  # the search itself finds literals
    graph_keys = set(defs.get_repository_def().asset_graph.get_all_asset_keys())
    # and for each model of the registry, the model and its re-detections
    assert graph_keys == set(ASSET_KEYS) | {key(model) for model in models.known()
                                           for key in (model_key, redetections_key)}
    assert len(ASSET_KEYS) == len(set(ASSET_KEYS))


# Functions are read whole on one screen; the benchmarks' long measuring scripts aside.
LONGEST_FUNCTION = 60


def test_functions_outside_the_benchmarks_are_under_60_lines():
    too_long = sorted(
        (node.end_lineno - node.lineno + 1, f"{name}.{node.name}")
        for name, path in modules().items() if not name.startswith("imgpipeline.cli.bench")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 >= LONGEST_FUNCTION)
    assert too_long == []


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
                          "import imgpipeline.defs.tables.views, imgpipeline.services")
    assert "imgpipeline.defs.tables.views" in loaded
    assert not {m for m in loaded if m.startswith("imgpipeline")
                and m.endswith((".assets", "definitions", ".partitions", "_sensor", ".detect_frames"))}


def test_the_code_location_loads_without_dagster_aws_or_the_instance_storage():
    """Every process that loads the code location (code servers, the fork server, each `dagster` and many
    `imgpipeline` commands) pays for what it imports: dagster-aws alone brings Dagster's test utilities,
    SQLAlchemy and Alembic, about a second of CPU. It is for the instance's S3 run logs, loaded there."""
    loaded = loaded_after("import imgpipeline.definitions")
    assert "imgpipeline.resources.storage.s3" in loaded
    assert not {m for m in loaded if m.split(".")[0] in ("dagster_aws", "alembic", "sqlalchemy")}


def test_the_contracts_document_names_every_column():
    from imgpipeline.defs.tables import TABLES

    text = (PACKAGE.parent / "docs" / "contracts.md").read_text()
    for name, table in TABLES.items():
        section = text.split(f"**{name}**", 1)[1].split("\n\n", 1)[0]
        assert re.findall(r"`(\w+)`", section) == table.schema.names, name


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


def rule_kind_branches(tree: ast.AST, names: set[str]) -> list[int]:
    """Lines that single out a rule kind by name: `x.kind` compared with (or looked up among) literals
    naming a kind."""

    def named(node) -> bool:
        if isinstance(node, ast.Constant):
            return node.value in names
        return isinstance(node, ast.Tuple | ast.List | ast.Set) and any(map(named, node.elts))

    def kind(node) -> bool:
        return isinstance(node, ast.Attribute) and node.attr == "kind"

    compared = [(node.lineno, [node.left, *node.comparators]) for node in ast.walk(tree)
                if isinstance(node, ast.Compare)]
    return [line for line, sides in compared if any(map(kind, sides)) and any(map(named, sides))]


def test_only_the_rules_package_names_rule_kinds_in_branches():
    """What a kind of alert rule fires on is its module's (vision/rules/): the evaluator, the live lane
    and the hourly asset ask the registry, so a new kind needs no branch elsewhere; and the kinds the
    rules file accepts are the kinds registered."""
    import typing

    from imgpipeline.vision import alert_rules, rules

    names = set(rules.REGISTRY)
    home = PACKAGE / "vision" / "rules"
    found = {name: lines for name, path in modules().items() if home not in path.parents
             and (lines := rule_kind_branches(ast.parse(path.read_text()), names))}
    assert found == {}
    assert rule_kind_branches(ast.parse('rule.kind == "dwell" or r.kind in ("class", "x")'), names) == [1, 1]
    assert rule_kind_branches(ast.parse('args.kind == "images"'), names) == []
    schema = {typing.get_args(model.model_fields["kind"].annotation)[0]
              for model in typing.get_args(typing.get_args(alert_rules.Rule)[0])}
    assert schema == names


def dagster_private_imports(path: Path) -> set[str]:
    """The `dagster._…` modules a file imports anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
        found |= {name for name in names if name.startswith("dagster._")}
    return found


def test_only_the_door_imports_dagsters_private_modules():
    door = PACKAGE / "lib" / "dagster_door.py"
    elsewhere = {name: sorted(found) for name, path in modules().items()
                 if path != door and (found := dagster_private_imports(path))}
    assert elsewhere == {}
    assert dagster_private_imports(door) == set()  # it names them, and imports them when first used


def unannotated_stores(tree: ast.AST) -> list[int]:
    """The lines where a parameter or attribute named `store` is not declared a `Storage`."""
    found = []
    for node in ast.walk(tree):
        named = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            every = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            named = [(a.lineno, a.annotation) for a in every if a.arg == "store"]
        elif isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "store":
            named = [(node.lineno, node.annotation)]
        found += [line for line, kind in named if kind is None or ast.unparse(kind) not in STORAGE_TYPES]
    return found


STORAGE_TYPES = {"Storage", "Storage | None"}


def test_every_store_is_declared_a_storage():
    undeclared = {name: lines for name, path in modules().items()
                  if (lines := unannotated_stores(ast.parse(path.read_text())))}
    assert undeclared == {}
    wrong = "def f(store, store2: object): ...\nclass A:\n    store: object"
    assert unannotated_stores(ast.parse(wrong)) == [1, 3]
    assert unannotated_stores(ast.parse("def f(store: Storage | None = None): ...")) == []


def fixed_sleeps(source: str) -> list[int]:
    """The lines of `time.sleep(` calls outside a loop's body and not marked `# scenario:` (why the pause is
    part of what is tested, not a wait for something)."""
    import io
    import tokenize

    marked = {token.start[0] for token in tokenize.generate_tokens(io.StringIO(source).readline)
              if token.type == tokenize.COMMENT and token.string.startswith("# scenario:")}
    found = []

    def visit(node: ast.AST, in_loop: bool) -> None:
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "time.sleep" and not in_loop \
                and node.lineno not in marked and node.end_lineno not in marked:
            found.append(node.lineno)
        for field, value in ast.iter_fields(node):
            looped = in_loop or (isinstance(node, (ast.While, ast.For, ast.AsyncFor)) and field == "body")
            for child in value if isinstance(value, list) else [value]:
                if isinstance(child, ast.AST):
                    visit(child, looped)

    visit(ast.parse(source), False)
    return found


def test_tests_wait_for_conditions_not_for_fixed_times():
    tests = PACKAGE.parent / "imgpipeline_tests"
    fixed = {str(path.relative_to(tests)): lines for path in sorted(tests.rglob("*.py"))
             if (lines := fixed_sleeps(path.read_text()))}
    assert fixed == {}, "wait for a condition (pipeline.wait_for), or say `# scenario:` why the pause is it"
    sample = ("time.sleep(1)\nwhile x:\n    time.sleep(1)\nelse:\n    time.sleep(2)\n"
              "time.sleep(3)  # scenario: the camera is away\nfor _ in y:\n    pass\n"
              "time.sleep(4)  # a wait\n")
    assert fixed_sleeps(sample) == [1, 5, 9]


# Where settings may be read from the environment: where the settings tree is built (the code location,
# the commands and what they start), the settings mechanism itself, and two places that say why.
READS_SETTINGS = {
    "imgpipeline.configuration": "the settings tree",
    "imgpipeline.definitions": "the code location, made once",
    "imgpipeline.lib.instance": "the environment of the Dagster processes a command starts",
    "imgpipeline.lib.run_priority": "the run launcher, when it launches a backfill's run",
    "imgpipeline.defs.partitions": "Dagster's partitions are made when the assets are declared",
}


def settings_read(tree: ast.AST) -> list[int]:
    """Lines that read settings from the environment: a call of some model's `from_env`."""
    return [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute) and node.func.attr == "from_env"]


def test_settings_are_read_where_the_tree_is_built_never_in_a_run():
    """A run, a sensor's tick and a listener take their settings from their resources or from what the
    code location built them with: no module but those named reads the environment."""
    allowed = ("imgpipeline.cli", "imgpipeline.services", "imgpipeline.resources", *READS_SETTINGS)
    found = {name: lines for name, path in modules().items()
             if not any(name == a or name.startswith(a + ".") for a in allowed)
             and (lines := settings_read(ast.parse(path.read_text())))}
    assert found == {}
    assert settings_read(ast.parse("x = Screening.from_env().near(1)\ny = other.env()")) == [1]
    assert all(name in modules() for name in READS_SETTINGS)


# Where a detection's fields may be declared together: the one type, and the landing record's JSON view of it.
DETECTION_SHAPES = {"imgpipeline.vision.detection.Detection",
                    "imgpipeline.defs.records.record.LandedDetection"}
DETECTION_FIELDS = {"class_name", "confidence", "box"}


def detection_shapes(tree: ast.AST) -> list[str]:
    """The classes that declare a detection's fields (`class_name`, `confidence` and `box`) together."""
    def declared(node: ast.ClassDef) -> set[str]:
        return {item.target.id for item in node.body
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)}

    return [node.name for node in ast.walk(tree)
            if isinstance(node, ast.ClassDef) and declared(node) >= DETECTION_FIELDS]


def test_a_detection_has_one_type():
    """The detector, landing, tracking, counting, alert rules and drawing share one `Detection`; a shape
    that must differ is a view of it (the landing record's JSON), never a second type."""
    found = {f"{name}.{cls}" for name, path in modules().items()
             for cls in detection_shapes(ast.parse(path.read_text()))}
    assert found == DETECTION_SHAPES
    sample = ("@dataclass\nclass Seen:\n    index: int\n    class_name: str\n    confidence: float\n"
              "    box: tuple\nclass Row:\n    class_name: str\n    box: tuple\n    x = 1\n")
    assert detection_shapes(ast.parse(sample)) == ["Seen"]
