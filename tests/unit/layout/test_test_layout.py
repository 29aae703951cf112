"""The test tree itself: pytest imports a test folder without `__init__.py` by the file's
basename (rootdir import mode), so two such files of one name break collection of the whole
run ("import file mismatch") — which only shows when both folders run in one session."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parents[2]


def _module_name(path: Path) -> str:
    """The name pytest gives a test module: its basename, prefixed by its packages."""
    parts = [path.stem]
    folder = path.parent
    while (folder / "__init__.py").exists():
        parts.insert(0, folder.name)
        folder = folder.parent
    return ".".join(parts)


def test_no_two_test_modules_share_an_import_name() -> None:
    names: dict[str, list[str]] = defaultdict(list)
    for path in TESTS.rglob("*.py"):
        if path.name.startswith("test_"):
            names[_module_name(path)].append(str(path.relative_to(TESTS)))
    clashes = {name: paths for name, paths in names.items() if len(paths) > 1}
    assert clashes == {}


def test_no_test_imports_from_conftest() -> None:
    """Importing `conftest` by name gets whichever conftest was imported first."""
    statements = ("from " + "conftest import", "\nimport " + "conftest")
    offenders = [
        str(p.relative_to(TESTS))
        for p in TESTS.rglob("*.py")
        if any(s in p.read_text() for s in statements)
    ]
    assert offenders == []
