"""atlas.domain stays pure (stdlib only, no clock reads, no async); exports and error codes are stable."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import atlas.domain
from atlas.domain import errors

ALLOWED_IMPORTS = {
    "__future__",
    "collections",
    "collections.abc",
    "dataclasses",
    "datetime",
    "enum",
    "re",
    "tomllib",
    "types",
    "typing",
}
DOMAIN_DIR = Path(atlas.domain.__file__).parent
MODULES = sorted(DOMAIN_DIR.glob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_module_is_pure(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                assert alias.name in ALLOWED_IMPORTS, f"{path.name} imports {alias.name}"
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            assert module in ALLOWED_IMPORTS or module.startswith("atlas.domain"), f"{path.name}: {module}"
        elif isinstance(node, ast.Attribute):
            # Business time is a parameter: reading the clock here would make rules untestable.
            assert node.attr not in {"now", "utcnow", "today", "time", "monotonic"}, (
                f"{path.name}: .{node.attr}"
            )
        elif isinstance(node, (ast.AsyncFunctionDef, ast.Await)):
            pytest.fail(f"{path.name} has async code")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id != "float", f"{path.name} converts to float"
        elif isinstance(node, ast.Constant):
            assert not isinstance(node.value, float), f"{path.name} has a float literal {node.value}"


def _defined_names(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {name for name in names if not name.startswith("_")}


@pytest.mark.parametrize("path", [p for p in MODULES if not p.name.startswith("_")], ids=lambda p: p.name)
def test_every_public_name_is_re_exported(path: Path) -> None:
    module = importlib.import_module(f"atlas.domain.{path.stem}")
    for name in _defined_names(path):
        assert getattr(atlas.domain, name, None) is getattr(module, name), (
            f"atlas.domain lacks {path.stem}.{name}"
        )


def test_package_exports_nothing_private() -> None:
    exported = {name for name in vars(atlas.domain) if not name.startswith("_")}
    defined = set().union(*(_defined_names(p) for p in MODULES if not p.name.startswith("_")))
    submodules = {p.stem for p in MODULES}
    assert exported - submodules == defined


def test_error_codes_are_unique_and_dotted() -> None:
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.DomainError)]
    codes = [c.code for c in classes]
    assert len(codes) == len(set(codes))
    for code in codes:
        area, _, name = code.partition(".")
        assert area and name and code == code.lower()


def test_error_params_and_hierarchy() -> None:
    exc = errors.PromoExpired("SPRING", "2026-01-01T00:00:00+00:00")
    assert exc.code == "promo.expired"
    assert exc.params == {"promo": "SPRING", "expired_at": "2026-01-01T00:00:00+00:00"}
    assert isinstance(exc, errors.PromoError) and isinstance(exc, errors.DomainError)
    assert "promo.expired" in str(exc)
    assert issubclass(errors.PlanConfigError, errors.ConfigError)
    assert issubclass(errors.ConfigError, ValueError) and not issubclass(
        errors.ConfigError, errors.DomainError
    )
    config = errors.PlanConfigError("plans[2].duration_days", "x" * 500, "must be a number")
    assert "plans[2].duration_days" in str(config) and len(str(config)) < 200  # bounded echo
