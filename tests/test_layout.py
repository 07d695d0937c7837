"""The folder layout is the seam between the two kinds of model, and imports respect it (read with
``ast``, nothing runs): core imports nothing above it; a method never imports another method; a
testbed never imports evaluation, methods, attacks or api; and only ``api/`` (with the CLI and the
package root above it) sees both kinds: a diffusion module never imports a language-model module,
nor the reverse."""

from __future__ import annotations

import ast
from pathlib import Path

import erasekit

ROOT = Path(erasekit.__file__).parent

#: Modules of one kind (prefixes of dotted names under ``erasekit``).
DIFFUSION = ("methods.diffusion", "attacks.diffusion", "models.diffusion", "models.profile", "testbeds.image",
             "training.diffusion", "judges.testbed", "evaluation.testbed_eval", "evaluation.monitor")  # fmt: skip
LM = ("methods.lm", "attacks.lm", "models.causal_lm", "models.lm_batches", "training.lm", "testbeds.facts",
      "judges.facts", "evaluation.lm")  # fmt: skip
#: Method modules that are shared arithmetic, not registered methods (a method may import them).
METHOD_HELPERS = {"methods.diffusion.closed_form"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path) -> set[str]:
    """Every erasekit module ``name`` imports (anywhere in the file), as dotted names under ``erasekit``."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(["erasekit", *package[: len(package) - node.level + 1], *([base] if base else [])])
            found |= {base} | {f"{base}.{a.name}" for a in node.names}
    return {m[len("erasekit.") :] for m in found if m.startswith("erasekit.")}


def _in(module: str, prefixes) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


MODULES = _modules()
IMPORTS = {name: {m for m in _imports(name, path) if m in MODULES} for name, path in MODULES.items()}


def test_core_imports_nothing_above_it():
    offenders = {n: sorted(m for m in ms if not m.startswith("core")) for n, ms in IMPORTS.items() if n.startswith("core")}
    assert not {n: ms for n, ms in offenders.items() if ms}, offenders


def test_methods_do_not_import_methods():
    def method(m: str) -> bool:
        return _in(m, ("methods.diffusion", "methods.lm")) and m not in METHOD_HELPERS and m.count(".") == 2

    offenders = {n: sorted(m for m in ms if method(m) and m != n) for n, ms in IMPORTS.items() if method(n)}
    assert not {n: ms for n, ms in offenders.items() if ms}, offenders


def test_testbeds_do_not_import_evaluation_methods_attacks_or_api():
    banned = ("evaluation", "methods", "attacks", "api", "cli", "judges")
    offenders = {n: sorted(m for m in ms if _in(m, banned)) for n, ms in IMPORTS.items() if n.startswith("testbeds")}
    assert not {n: ms for n, ms in offenders.items() if ms}, offenders


def test_only_the_api_sees_both_kinds():
    offenders = {}
    for name, imported in IMPORTS.items():
        for mine, other in ((DIFFUSION, LM), (LM, DIFFUSION)):
            if _in(name, mine):
                bad = sorted(m for m in imported if _in(m, other))
                if bad:
                    offenders[name] = bad
    assert not offenders, offenders


def test_the_folders_show_the_seam():
    for folder in ("models/diffusion", "methods/diffusion", "methods/lm", "attacks/diffusion", "attacks/lm", "judges",
                   "testbeds/image", "testbeds/facts"):  # fmt: skip
        assert (ROOT / folder / "__init__.py").is_file(), folder
    assert (ROOT / "models" / "causal_lm.py").is_file() and (ROOT / "models" / "load.py").is_file()


def test_the_old_module_names_still_import_with_a_warning():
    import importlib
    import sys
    import warnings

    from erasekit._moved import MOVED

    for old, new in MOVED.items():
        sys.modules.pop(old, None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            module = importlib.import_module(old)
        assert module is importlib.import_module(new), old
        assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message) for w in caught), old
