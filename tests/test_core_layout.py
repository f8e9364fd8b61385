"""The core's folders show its parts, and every module imports on its own: no import cycles."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import antiprof_core

# Each module in a clean slate: a cycle shows up as an ImportError only when its module is the first imported.
IMPORT_EACH_ALONE = """
import importlib, sys
failures = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "antiprof_core" or m.startswith("antiprof_core.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as exc:
        failures.append(f"{name}: {type(exc).__name__}: {exc}")
print("\\n".join(failures))
"""


def core_modules() -> list[str]:
    return sorted(
        info.name
        for info in pkgutil.walk_packages(antiprof_core.__path__, "antiprof_core.")
        if not info.name.endswith(".child")  # the compiler child is run as a script, in its own interpreter
    )


def test_the_parts_have_their_own_folders() -> None:
    names = set(core_modules())
    assert {"antiprof_core.sources", "antiprof_core.symbolize", "antiprof_core.testing"} <= names
    sources = {"antiprof_core.sources." + name for name in ("bpf.window", "synthetic", "replay")}
    symbolize = {"antiprof_core.symbolize." + name for name in ("symbolizer", "elf", "perfmap", "kallsyms", "procfs")}
    assert sources <= names
    assert symbolize <= names


def test_every_core_module_imports_alone() -> None:
    modules = core_modules()
    assert len(modules) > 40
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_EACH_ALONE, *modules], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_importing_sources_and_symbolize_loads_no_bcc() -> None:
    code = "import sys, antiprof_core.sources, antiprof_core.symbolize; print('bcc' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (0, "False\n"), result.stderr


def test_every_core_package_is_in_the_wheel() -> None:
    """pyproject.toml lists the packages by hand (the BPF source lives outside the tree): a package
    missing there works in the editable checkout and fails with ModuleNotFoundError once installed."""
    import tomllib
    from pathlib import Path

    root = Path(antiprof_core.__file__).parent
    listed = set(tomllib.loads((root.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {
        "antiprof_core." + ".".join(init.parent.relative_to(root).parts) if init.parent != root else "antiprof_core"
        for init in root.rglob("__init__.py")
    }
    assert packages <= listed, sorted(packages - listed)
