"""The suite's own layout: tests mirror `relay/`, and share only through `tests/support/`.

A test file (a conftest included) that imports another test file couples two tests' bodies: a
change to one breaks the other for no reason a reader can see. What tests share is a fixture
(a plugin in tests/support/ registered by tests/conftest.py, or a folder's conftest.py) or a
helper in a `tests/support/` module, which imports nothing from the test files either.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
RELAY = ROOT / "relay"
SUPPORT = TESTS / "support"
# Test folders with no counterpart under relay/, and why.
CROSS_CUTTING = {
    # System tests of store outages: real `relay worker` processes on private stores.
    Path("outages"): "store-outage system tests across poller, delivery and workers",
    Path("support"): "the shared fixtures and helpers themselves",
}


def _python_files() -> list[Path]:
    """Every test file, conftest and support module, and the benches (which share the
    polling ground truth with the tests the same way)."""
    files = [*TESTS.rglob("*.py"), *(ROOT / "bench").glob("*.py")]
    return sorted(p for p in files if "__pycache__" not in p.parts)


def _package(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])


def imported_modules(source: str, package: str) -> set[str]:
    """Every module `source` imports (absolute names; relative ones resolved in `package`)."""
    tree = ast.parse(source)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            # `from tests.x import test_y` imports the module tests.x.test_y.
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def forbidden_imports(source: str, package: str) -> list[str]:
    """The test files and conftests `source` (a file of `package`) imports: any `tests.*`
    module outside tests/support that exists."""
    bad = []
    for module in sorted(imported_modules(source, package)):
        parts = module.split(".")
        if parts[0] != "tests" or len(parts) == 1:
            continue
        if parts[1] == "support":
            continue
        target = TESTS.joinpath(*parts[1:])
        if target.with_suffix(".py").is_file():  # a module, not one of the folders' packages
            bad.append(module)
    return bad


def test_no_test_file_imports_another_test_file_or_a_conftest() -> None:
    offenders = {
        str(path.relative_to(ROOT)): bad
        for path in _python_files()
        if (bad := forbidden_imports(path.read_text(), _package(path)))
    }
    assert offenders == {}, "share through tests/support/, not by importing a test file"


def test_support_modules_are_not_test_files() -> None:
    """A support module named test_*.py would be collected as tests; a conftest there would be
    a second place for fixtures that tests/conftest.py does not register."""
    names = sorted(p.name for p in SUPPORT.glob("*.py"))
    assert [n for n in names if n.startswith("test_") or n == "conftest.py"] == []


def test_every_test_folder_mirrors_a_relay_package() -> None:
    folders = sorted(
        path.relative_to(TESTS)
        for path in TESTS.rglob("*")
        if path.is_dir() and "__pycache__" not in path.parts
    )
    unmatched = [
        str(folder)
        for folder in folders
        if folder not in CROSS_CUTTING and not (RELAY / folder / "__init__.py").is_file()
    ]
    assert unmatched == [], "a tests/ folder mirrors a relay/ package (or is listed above)"


def test_top_level_tests_are_of_top_level_modules_or_the_suite() -> None:
    """tests/test_x.py tests relay/x.py (or a part of the foundation it names in its docstring):
    a test of a stage's module belongs in that stage's folder."""
    stages = {p.name for p in RELAY.iterdir() if (p / "__init__.py").is_file()}
    misplaced = [
        path.name
        for path in sorted(TESTS.glob("test_*.py"))
        if path.stem.removeprefix("test_") in stages
    ]
    assert misplaced == []


@pytest.mark.parametrize(
    ("source", "bad"),
    [
        ("from tests.conftest import TEST_ADMIN_TOKEN\n", ["tests.conftest"]),
        ("from tests.delivery.conftest import subscribe\n", ["tests.delivery.conftest"]),
        ("from tests.snapshots import test_diff\n", ["tests.snapshots.test_diff"]),
        ("from tests import conftest\n", ["tests.conftest"]),
        ("import tests.poller.test_drift\n", ["tests.poller.test_drift"]),
        ("from .conftest import TEST_POLICY\n", ["tests.poller.conftest"]),
        ("from tests.support.stores import AUTH\n", []),
        ("from tests.support import delivery\n", []),
    ],
)
def test_the_import_check_can_fail(source: str, bad: list[str]) -> None:
    """The check above finds what it is for, in a file of tests/poller (a check that cannot
    fail proves nothing)."""
    assert forbidden_imports(source, "tests.poller") == bad
