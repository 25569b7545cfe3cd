"""Every notebook's imports are installed by the one command the README gives for the notebooks.

The README's "Open the notebooks" section installs ``-e ".[notebooks]"``. This test reads the extra from that
command, then collects what each notebook imports:

- every ``import`` in its code cells (parsed with :mod:`ast`; shell ``!`` lines and ``%`` magics are skipped);
- for each ``spo_lab`` module a notebook imports, what that module imports (in functions too: the library imports
  ``peft`` or ``datasets`` on first use), following the library's module-level imports of its own modules; an
  import inside ``try: ... except ImportError`` is an optional fallback and does not count;
- :data:`INDIRECT`: the few imports the library makes where no import statement shows them.

Each third-party name is mapped to the distribution that provides it
(:func:`importlib.metadata.packages_distributions`), which must be one of the project's dependencies, one of the
extra's, or something those require (``IPython`` comes with ``ipykernel``).
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import importlib.util
import json
import re
import sys
from functools import lru_cache
from pathlib import Path

import pytest

try:
    import tomllib  # Python >= 3.11
except ImportError:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml needs Python >= 3.11 or the tomli package")

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SECTION = "## Open the notebooks"

INDIRECT = {
    # module -> (top-level names it imports without an import statement of its own, how)
    "spo_lab.tasks.math_reward": ({"math_verify"}, "from math_verify import parse, verify"),  # in a worker's source
}


# ====================================================================== what the README installs
def readme_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert SECTION in text, f"README.md has no {SECTION!r} section"
    return text.split(SECTION, 1)[1].split("\n## ", 1)[0]


def readme_extras() -> list[str]:
    """The extras of the section's ``pip install -e ".[...]"`` command."""
    installs = re.findall(r"""pip install (?:-e )?["']?\.\[([\w,-]+)\]""", readme_section())
    assert len(installs) == 1, f"the {SECTION!r} section should give one install command, found {installs}"
    return installs[0].split(",")


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def declared(extras, project=None) -> set[str]:
    """Canonical names of the dependencies plus those of ``extras`` (``spo_lab[x]`` entries expanded)."""
    project = project or pyproject()["project"]
    names, todo, seen = set(), [*project["dependencies"]], set()
    todo += [f"{project['name']}[{e}]" for e in extras]
    while todo:
        req = Requirement(todo.pop())
        if canonicalize_name(req.name) == canonicalize_name(project["name"]):
            for extra in set(req.extras) - seen:
                seen.add(extra)
                todo += project["optional-dependencies"][extra]
        else:
            names.add(canonicalize_name(req.name))
    return names


def with_requirements(names: set[str]) -> set[str]:
    """``names`` plus everything their installed distributions require (markers evaluated, no extras)."""
    env = {**default_environment(), "extra": ""}
    out, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in out:
            continue
        out.add(name)
        try:
            reqs = md.requires(name) or []
        except md.PackageNotFoundError:  # not installed here: its own requirements are unknown
            continue
        for line in reqs:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate(env):
                todo.append(canonicalize_name(req.name))
    return out


# ====================================================================== what the notebooks import
def _python(cell_source: str) -> str:
    """A code cell without IPython's shell escapes and magics (which are not Python)."""
    return "\n".join("" if line.lstrip().startswith(("!", "%")) else line for line in cell_source.splitlines())


class _Imports(ast.NodeVisitor):
    """Absolute imports of a module (``top``: module level only), except optional ones in ``try/except ImportError``."""

    def __init__(self, module: str = "", package: bool = False):
        self.package = module if package else module.rpartition(".")[0]
        self.names: set[str] = set()  # every imported module name, dotted
        self.top: set[str] = set()    # those imported at module level
        self.depth = 0

    def _add(self, name: str):
        self.names.add(name)
        if self.depth == 0:
            self.top.add(name)

    def visit_Try(self, node):
        caught = {n.id for h in node.handlers for n in ast.walk(h.type or ast.Name("BaseException"))
                  if isinstance(n, ast.Name)}
        optional = bool(caught & {"ImportError", "ModuleNotFoundError"})
        for stmt in node.body:
            if not (optional and isinstance(stmt, (ast.Import, ast.ImportFrom))):
                self.visit(stmt)
        for stmt in [*node.handlers, *node.orelse, *node.finalbody]:
            self.visit(stmt)

    visit_TryStar = visit_Try

    def _nested(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _nested

    def visit_Import(self, node):
        for alias in node.names:
            self._add(alias.name)

    def visit_ImportFrom(self, node):
        if node.level:
            base = self.package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            module = ".".join(p for p in (base, node.module) if p)
        else:
            module = node.module
        self._add(module)
        for alias in node.names:  # `from spo_lab.teaching import runs` imports the module spo_lab.teaching.runs
            self._add(f"{module}.{alias.name}")


def _module_file(module: str) -> Path | None:
    if not (module == "spo_lab" or module.startswith("spo_lab.")):
        return None
    base = ROOT.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@lru_cache(maxsize=None)
def _library_imports(module: str) -> tuple[frozenset, frozenset]:
    """(every name ``module`` imports, the library modules it imports at module level)."""
    path = _module_file(module)
    visitor = _Imports(module, package=path.name == "__init__.py")
    visitor.visit(ast.parse(path.read_text(encoding="utf-8")))
    names = set(visitor.names) | INDIRECT.get(module, (set(), ""))[0]
    below = {m for m in visitor.top if _module_file(m)}
    parents = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}  # packages run __init__
    return frozenset(names), frozenset((below | parents) - {module})


def notebook_imports(path: Path) -> dict[str, set[str]]:
    """Third-party top-level name -> where it comes from (``cell N`` or the library module that imports it)."""
    found: dict[str, set[str]] = {}
    library: dict[str, str] = {}
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        visitor = _Imports()
        visitor.visit(ast.parse(_python(source), filename=f"{path.name}, cell {i}"))
        for name in visitor.names:
            if _module_file(name):
                library.setdefault(name, f"cell {i}")
            else:
                found.setdefault(name.split(".")[0], set()).add(f"cell {i}")
    todo = list(library)
    while todo:
        module = todo.pop()
        names, below = _library_imports(module)
        for name in names:
            if not _module_file(name):
                found.setdefault(name.split(".")[0], set()).add(module)
        for m in below - set(library):
            library[m] = module
            todo.append(m)
    return {name: where for name, where in found.items()
            if name not in sys.stdlib_module_names and name not in ("__future__", "spo_lab")}


def missing(path: Path, allowed: set[str]) -> list[str]:
    """The notebook's third-party imports that no distribution in ``allowed`` provides, with where they come from."""
    provides = md.packages_distributions()
    out = []
    for name, where in sorted(notebook_imports(path).items()):
        dists = {canonicalize_name(d) for d in provides.get(name, [])}
        if not dists & allowed:
            by = ", ".join(sorted(dists)) or "no installed distribution"
            out.append(f"{name} ({by}; imported by {', '.join(sorted(where))})")
    return out


# ====================================================================== the tests
def test_readme_section_installs_one_extra_starts_jupyterlab_and_names_the_cache():
    section = readme_section()
    assert readme_extras() == ["notebooks"]
    assert "jupyter lab" in section and "colab" in section.lower()
    assert "SPO_LAB_CACHE_DIR" in section


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_import_is_installed_by_the_readme_extra(path):
    extras = readme_extras()
    gaps = missing(path, with_requirements(declared(extras)))
    assert not gaps, (f"{path.name} imports what `pip install -e \".[{','.join(extras)}]\"` does not install "
                      "(add it to that extra in pyproject.toml):\n  " + "\n  ".join(gaps))


def test_the_check_sees_the_math_task_that_notebook_9_needs():
    """Without ``datasets`` and ``math-verify`` in the extra, notebook 9 fails the check: it can fail."""
    project = pyproject()["project"]
    extras = {k: [r for r in v if canonicalize_name(Requirement(r).name) not in {"datasets", "math-verify"}]
              for k, v in project["optional-dependencies"].items()}
    allowed = with_requirements(declared(["notebooks"], {**project, "optional-dependencies": extras}))
    gaps = missing(ROOT / "notebooks" / "09_full_scale.ipynb", allowed)
    assert [g.split()[0] for g in gaps] == ["datasets", "math_verify"], gaps
    assert "spo_lab.tasks.math_reward" in gaps[1] and "cell" in gaps[0]


def test_indirect_imports_are_still_made():
    for module, (_, statement) in INDIRECT.items():
        assert statement in _module_file(module).read_text(encoding="utf-8"), \
            f"{module} no longer has {statement!r}: update INDIRECT"


def test_optional_imports_and_magics_do_not_count(tmp_path):
    nb = tmp_path / "99_x.ipynb"
    cells = [{"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
              "source": ["!pip install nothing_real\n", "%matplotlib inline\n", "try:\n", "    import tomli\n",
                         "except ImportError:\n", "    tomli = None\n", "import numpy, not_a_real_package_x\n"]}]
    nb.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    assert set(notebook_imports(nb)) == {"numpy", "not_a_real_package_x"}
    assert missing(nb, {"numpy"}) == ["not_a_real_package_x (no installed distribution; imported by cell 0)"]
    assert importlib.util.find_spec("not_a_real_package_x") is None
