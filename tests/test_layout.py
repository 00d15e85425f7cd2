"""The house keeps its layout: no stage imports a later one, and each table has one owner.

Both checks read the source with `ast` (nothing is imported or run), so they see what a reader
sees. Today's known breaches are listed in KNOWN_VIOLATIONS, each with who removes it; the
coordinator deletes an entry when that branch merges. An entry that no longer occurs fails
`test_known_violations_still_occur`, so the list can only shrink, and a breach not on it fails
the stage or ownership test.
"""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# ---- stages -------------------------------------------------------------------------------------

FOUNDATION = "foundation"
# What each stage may import besides itself and the foundation (the working agreement: data flows
# sources -> poller -> snapshots -> events -> delivery -> api/ui -> cli; the poller drives
# snapshots, which write events; events, the outbox both halves share, imports no stage).
ALLOWED: dict[str, frozenset[str]] = {
    FOUNDATION: frozenset(),
    "sources": frozenset(),
    "events": frozenset(),
    "snapshots": frozenset({"events"}),
    "poller": frozenset({"sources", "snapshots", "events"}),
    "delivery": frozenset({"sources", "snapshots", "events"}),
    "api/ui": frozenset({"sources", "poller", "snapshots", "events", "delivery"}),
    "cli": frozenset(
        {"sources", "poller", "snapshots", "events", "delivery", "api/ui", "sandbox", "retention"}
    ),
    # Simulated upstreams: they know HTTP and the foundation, not how Relay reads them.
    "sandbox": frozenset(),
    "retention": frozenset({"sources", "snapshots", "events", "delivery"}),
    "workers": frozenset(
        {"sources", "poller", "snapshots", "events", "delivery", "api/ui", "retention"}
    ),
}
_PACKAGES = {
    "sources": "sources",
    "poller": "poller",
    "snapshots": "snapshots",
    "events": "events",
    "delivery": "delivery",
    "api": "api/ui",
    "ui": "api/ui",
    "cli": "cli",
    "__main__": "cli",
    "sandbox": "sandbox",
    "retention": "retention",
}
# The foundation: every other module directly under relay/ (settings, db, errors, ...).
FOUNDATION_MODULES = frozenset(
    {"settings", "db", "errors", "logs", "ids", "vault", "metrics", "http", "exactjson", "paging"}
)


def stage_of(module: str) -> str | None:
    """The stage of a dotted module name of relay/ or workers/; None for anything else."""
    parts = module.split(".")
    if parts[0] == "workers":
        return "workers"
    if parts[0] != "relay":
        return None
    if len(parts) == 1 or parts[1] in FOUNDATION_MODULES:
        return FOUNDATION
    return _PACKAGES.get(parts[1], f"unmapped:{parts[1]}")


@functools.cache
def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))


def module_of(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_files() -> list[Path]:
    return sorted([*ROOT.glob("relay/**/*.py"), *ROOT.glob("workers/**/*.py")])


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node except the bodies of `if TYPE_CHECKING:` (their `else:` runs, so it counts)."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
        else:
            stack.extend(ast.iter_child_nodes(node))


def imports_of(path: Path, module: str | None = None) -> set[str]:
    """The relay/workers modules a file imports at run time (`from relay import x` names
    `relay.x`; relative imports are resolved against the file's package)."""
    module = module or module_of(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in _runtime_nodes(parse(path)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base in ("relay", "workers"):
                found.update(f"{base}.{alias.name}" for alias in node.names)
            else:
                found.add(base)
    return {name for name in found if stage_of(name) is not None}


@dataclass(frozen=True)
class Violation:
    """One breach: `file` (relative to the repo) and `what` (an import or a table)."""

    file: str
    what: str


def stage_violations() -> set[Violation]:
    found: set[Violation] = set()
    for path in source_files():
        own = stage_of(module_of(path))
        assert own is not None
        for name in imports_of(path):
            target = stage_of(name)
            assert target is not None
            reaches_back = target not in (own, FOUNDATION, *ALLOWED[own])
            if reaches_back or (own != "workers" and target == "workers"):
                found.add(Violation(str(path.relative_to(ROOT)), name))
    return found


# ---- tables -------------------------------------------------------------------------------------

OWNERS: dict[str, str] = {
    "accounts": "relay/sources/accounts.py",
    "account_warnings": "relay/poller/account_warnings.py",
    "poll_tasks": "relay/poller/state.py",
    "poll_state": "relay/poller/state.py",
    "snapshots": "relay/snapshots/diff.py",
    "snapshot_scans": "relay/snapshots/scans.py",
    "snapshot_scan_pages": "relay/snapshots/scans.py",
    "events": "relay/events.py",
    "object_sequences": "relay/events.py",
    "event_fanout_queue": "relay/events.py",
    "subscriptions": "relay/delivery/subscriptions.py",
    "subscription_matching": "relay/delivery/subscriptions.py",
    "deliveries": "relay/delivery/store.py",
    "delivery_attempts": "relay/delivery/store.py",
    "delivery_jobs": "relay/delivery/recovery.py",
    "console_sessions": "relay/ui/auth.py",
    "relay_schema": "relay/db.py",
}
_NAME = r'"?([a-z_][a-z0-9_]*)"?'
_WRITES = re.compile(
    r"\b(?:INSERT\s+INTO|(?<!FOR )(?<!KEY )UPDATE|DELETE\s+FROM|COPY|TRUNCATE(?:\s+TABLE)?)\s+"
    + _NAME
)
_SQL = re.compile(r"\b(?:SELECT|INSERT\s+INTO|UPDATE|DELETE\s+FROM|COPY|TRUNCATE)\b")
_MAIN = re.compile(r"\bFROM\s+" + _NAME)
_NAMED = re.compile(r"\b(?:FROM|JOIN)\s+" + _NAME)
DYNAMIC = "<dynamic table>"
# asyncpg's COPY calls name the table as their first argument (or `table_name=`).
_COPY_CALLS = frozenset({"copy_records_to_table", "copy_to_table", "copy_from_table"})
_HOLE = "__expr__"  # what an f-string's {expression} reads as


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def string_literals(tree: ast.AST) -> Iterator[str]:
    """Every string literal but docstrings; an f-string with its holes as `__expr__`."""
    skip = _docstrings(tree)
    inner: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            inner.update(id(value) for value in node.values)
            yield "".join(
                value.value if isinstance(value, ast.Constant) else _HOLE for value in node.values
            )
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in skip
            and id(node) not in inner
        ):
            yield node.value


def _top_level(sql: str) -> str:
    """`sql` with everything inside parentheses blanked: sub-selects, CTE bodies, calls."""
    out, depth = [], 0
    for char in sql:
        if char == "(":
            depth += 1
        elif char == ")":
            depth = max(0, depth - 1)
        out.append(char if depth == 0 and char not in "()" else " ")
    return "".join(out)


def tables_of(sql: str) -> set[str]:
    """The tables a statement is about: those it writes, else the main table it reads (the
    first FROM outside parentheses). JOINs and sub-selects ride along with that subject; when
    the subject is no table (`FROM unnest(...)`, a CTE's name), every table it names counts.
    A fragment (no statement outside parentheses: `EXISTS (SELECT ...)`) counts as nothing,
    since the statement it is spliced into is judged where it is written. A table name that
    is an f-string hole counts as DYNAMIC: the reader cannot tell whose table it is."""
    top = _top_level(sql)
    if not _SQL.search(top):
        return set()
    writes = set(_WRITES.findall(sql))
    subjects = writes or set(_MAIN.findall(top)[:1])
    if not subjects or not subjects & (OWNERS.keys() | {_HOLE}):
        subjects = set(_NAMED.findall(sql))
    found = {name for name in subjects if name in OWNERS}
    return found | ({DYNAMIC} if _HOLE in subjects else set())


def table_uses(path: Path) -> set[str]:
    """The tables a file writes or reads as the subject of a statement."""
    tree = parse(path)
    used: set[str] = set()
    for text in string_literals(tree):
        used |= tables_of(text)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in _COPY_CALLS
        ):
            names = [*node.args[:1], *(k.value for k in node.keywords if k.arg == "table_name")]
            used.update(
                n.value
                for n in names
                if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in OWNERS
            )
    return used


def ownership_violations() -> set[Violation]:
    found: set[Violation] = set()
    for path in source_files():
        file = str(path.relative_to(ROOT))
        found.update(
            Violation(file, table) for table in table_uses(path) if OWNERS.get(table) != file
        )
    return found


# ---- violations tolerated for now ----------------------------------------------------------------

# (file, import or table, who removes it). Emptied when issue 11's branches merged; an entry
# here is a debt with a name on it, and an entry that no longer occurs fails the test below.
KNOWN_VIOLATIONS: list[tuple[str, str, str]] = []


def _known() -> set[Violation]:
    return {Violation(file, what) for file, what, _who in KNOWN_VIOLATIONS}


def test_every_module_has_a_stage() -> None:
    unmapped = {
        str(path.relative_to(ROOT))
        for path in source_files()
        if str(stage_of(module_of(path))).startswith("unmapped:")
    }
    assert unmapped == set(), "map these to a stage in tests/test_layout.py"


def test_no_stage_imports_a_later_one() -> None:
    new = stage_violations() - _known()
    assert new == set(), "imports that reach a later stage (or workers from relay)"


def test_each_table_is_written_and_read_as_subject_only_by_its_owner() -> None:
    new = ownership_violations() - _known()
    assert new == set(), "SQL on a table outside its owner module (see OWNERS)"


def test_known_violations_still_occur() -> None:
    stale = _known() - stage_violations() - ownership_violations()
    assert stale == set(), "fixed: delete these from KNOWN_VIOLATIONS"


# ---- one of each --------------------------------------------------------------------------------

# A shared helper and what only a copy of it would spell out: the executor alias (asyncpg's pool
# connection proxy), the Retry-After parser (an HTTP date), the cursor codec (URL-safe base64)
# and the limit check (its message). Anywhere else, import the helper.
ONE_OF_EACH = {
    "PoolConnectionProxy": "relay/db.py",
    "parsedate_to_datetime": "relay/http.py",
    "urlsafe_b64decode": "relay/paging.py",
    "limit must be an integer": "relay/paging.py",
}


@pytest.mark.parametrize(("marker", "home"), ONE_OF_EACH.items())
def test_one_of_each_shared_helper(marker: str, home: str) -> None:
    spelled = {
        str(path.relative_to(ROOT))
        for path in source_files()
        if marker in path.read_text(encoding="utf-8")
    }
    assert spelled == {home}, f"import the one in {home} instead of a copy"


# ---- the checks can fail ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "subjects"),
    [
        ("SELECT id FROM accounts WHERE id = $1", {"accounts"}),
        ("SELECT e.id FROM events e JOIN deliveries d ON d.event_id = e.id", {"events"}),
        ("SELECT (SELECT count(*) FROM deliveries) AS n FROM events", {"events"}),
        ("INSERT INTO deliveries (id) SELECT id FROM events", {"deliveries"}),
        ("UPDATE poll_tasks SET due_at = now() FROM accounts a", {"poll_tasks"}),
        ("DELETE FROM snapshots WHERE account_id = $1", {"snapshots"}),
        ("TRUNCATE TABLE events", {"events"}),
        ("COPY delivery_attempts FROM STDIN", {"delivery_attempts"}),
        ("INSERT INTO events (id) VALUES ($1) ON CONFLICT (id) DO UPDATE SET id = $1", {"events"}),
        ("SELECT d.id FROM deliveries d JOIN events e ON true FOR UPDATE OF d", {"deliveries"}),
        ("WITH due AS (SELECT id FROM poll_tasks) SELECT * FROM due", {"poll_tasks"}),
        (
            "WITH gone AS (DELETE FROM events RETURNING id) SELECT count(*) FROM gone",
            {"events"},
        ),
        (
            "SELECT a.id FROM unnest($1) AS a(id) WHERE EXISTS (SELECT 1 FROM poll_tasks)",
            {"poll_tasks"},
        ),
        ("EXISTS (SELECT 1 FROM subscriptions AS s WHERE s.id = d.subscription_id)", set()),
        ("SELECT count(*) FROM __expr__", {DYNAMIC}),
        ("SELECT __expr__ FROM accounts", {"accounts"}),
        ("SELECT extract(epoch FROM now()) AS t", set()),
        ("SELECT relname FROM pg_class", set()),
    ],
)
def test_the_sql_reader_finds_a_statements_subject(sql: str, subjects: set[str]) -> None:
    assert tables_of(sql) == subjects


def test_the_checks_catch_a_breach(tmp_path: Path) -> None:
    """A foundation module importing a stage, and a table's SQL outside its owner, are found."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from typing import TYPE_CHECKING\n"
        "import relay.delivery.store\n"
        "from relay import events\n"
        "if TYPE_CHECKING:\n"
        "    from relay.cli import main\n"
        "Q = f'SELECT {1} FROM accounts'\n"
        "async def f(conn):\n"
        "    '''SELECT * FROM deliveries (a docstring: not SQL)'''\n"
        "    await conn.copy_records_to_table('snapshots', records=[])\n"
        "    await conn.execute('UPDATE events SET type = $1')\n",
        encoding="utf-8",
    )
    assert imports_of(sample, "relay.settings") == {"relay.delivery.store", "relay.events"}
    assert table_uses(sample) == {"accounts", "snapshots", "events"}
    assert stage_of("relay.db") == FOUNDATION
    assert "delivery" not in ALLOWED[FOUNDATION]
    assert stage_of("relay.poller.plan") not in ALLOWED["snapshots"]
