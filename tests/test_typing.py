"""Typed (issue 14): ``mypy --strict`` passes on the package, checked against
the stub the build generated for the extension module (``_core.pyi`` next to
``_core`` in the package imported here, e.g. build/<dir>/pkg/shoal), and on
the README's Python examples; the stub is what stubgen makes of the built
module with cpp/bindings/stubgen_patterns.txt, every pattern of which still
matches. Nothing is skipped: without mypy or nanobind these tests fail."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import shoal

ROOT = Path(__file__).resolve().parent.parent
# Not resolved: in the dev package the modules are links into python/shoal,
# and the stub is a real file beside them.
PACKAGE = Path(shoal.__file__).parent
STUB = PACKAGE / "_core.pyi"
PATTERNS = ROOT / "cpp" / "bindings" / "stubgen_patterns.txt"


def _require(module: str) -> None:
    try:
        __import__(module)
    except ImportError:
        pytest.fail(f"{module} is not installed: pip install -r requirements-dev.txt")


def _mypy(*targets: str, cache: Path) -> subprocess.CompletedProcess[str]:
    """``mypy`` with the repository's configuration ([tool.mypy] in
    pyproject.toml: strict), the imported package first on its path."""
    _require("mypy")
    assert STUB.is_file(), f"no {STUB}: the build generates it (cpp/bindings/CMakeLists.txt)"
    env = dict(os.environ, MYPYPATH=str(PACKAGE.parent))
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
         "--cache-dir", str(cache), "--no-color-output", "--no-error-summary", *targets],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )


@pytest.fixture(scope="module")
def mypy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Beside the build when the package is a dev package (warm from run to run), else a fresh one."""
    build = ROOT / "build"
    if build in PACKAGE.parents:
        return PACKAGE.parent.parent / "mypy_cache"
    return tmp_path_factory.mktemp("mypy_cache")


def test_the_package_passes_mypy_strict(mypy_cache: Path) -> None:
    run = _mypy("-p", "shoal", cache=mypy_cache)
    assert run.returncode == 0, run.stdout + run.stderr
    # The package checked is the one imported here, stub included.
    assert "error" not in run.stdout


def readme_examples() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_the_readme_examples_pass_mypy_strict(tmp_path: Path, mypy_cache: Path) -> None:
    examples = readme_examples()
    assert len(examples) >= 4, "the README's Python examples were not found"
    files = []
    for i, code in enumerate(examples, 1):
        path = tmp_path / f"readme_example_{i}.py"
        path.write_text(code, encoding="utf-8")
        files.append(str(path))
    run = _mypy(*files, cache=mypy_cache)
    assert run.returncode == 0, run.stdout + run.stderr


def test_mypy_sees_the_stub_of_the_extension_module(tmp_path: Path, mypy_cache: Path) -> None:
    # A wrong use of _core is an error, so the check above ran against the real stub.
    probe = tmp_path / "probe_core.py"
    probe.write_text("from shoal import _core\n_core.Arena.create(limit='many')\n", encoding="utf-8")
    run = _mypy(str(probe), cache=mypy_cache)
    assert run.returncode == 1 and 'incompatible type "str"' in run.stdout, run.stdout + run.stderr


def test_the_stub_is_stubgens_with_every_pattern_used(tmp_path: Path) -> None:
    _require("nanobind")
    out = tmp_path / "_core.pyi"
    # As the build runs it (nanobind_add_stub), but without -q: stubgen warns of unused patterns.
    run = subprocess.run(
        [sys.executable, "-m", "nanobind.stubgen", "-m", "_core", "-i", str(PACKAGE), "-P",
         "-p", str(PATTERNS), "-o", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "did not match" not in run.stdout, run.stdout
    assert out.read_text(encoding="utf-8") == STUB.read_text(encoding="utf-8"), (
        f"{STUB} is not what stubgen makes of this _core now: rebuild"
    )
