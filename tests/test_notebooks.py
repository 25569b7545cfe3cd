"""The notebooks' form: collected by the test command, profiled, Colab-ready, committed with clean outputs.

nbval executes the notebooks themselves (``pytest`` collects ``notebooks/`` with ``--nbval-lax``, in the
``ci`` profile set by notebooks/conftest.py); these tests check what nbval does not: the structure
every notebook shares, the stored outputs a reader sees on GitHub, and the helpers in
:mod:`spo_lab.teaching.notebook` and ``scripts/sync_notebooks.py``.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
from scripts_module import load_script

import spo_lab
from spo_lab.teaching import notebook as nbh

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
MAX_BYTES = 1_500_000
# absolute local paths that must never reach a committed output (a reader's machine differs)
LOCAL_PATH = re.compile(r"(?<![\w.])(/work/|/tmp/|/root/|/home/\w+/|/Users/\w+/|[A-Z]:\\\\Users)")

tomllib = pytest.importorskip("tomllib")


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _src(cell) -> str:
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else s


def _text_outputs(cell):
    """Every piece of text in a cell's outputs (images excluded: base64 can contain any substring)."""
    for out in cell.get("outputs", []):
        if "text" in out:
            yield "".join(out["text"]) if isinstance(out["text"], list) else out["text"]
        for mime, data in out.get("data", {}).items():
            if mime.startswith("text/") or mime.endswith("json"):
                yield "".join(data) if isinstance(data, list) else json.dumps(data)
        if out.get("output_type") == "error":
            yield "\n".join(out.get("traceback", []))


def _sync_module():
    return load_script("sync_notebooks")


# ====================================================================== collection by the test command
def test_the_test_command_collects_every_notebook():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "notebooks" in cfg["testpaths"], "pytest's testpaths must include notebooks/"
    assert "--nbval-lax" in cfg.get("addopts", ""), "notebooks are run by nbval in lax mode"
    conftest = (ROOT / "notebooks" / "conftest.py").read_text()
    assert 'setdefault("SPO_LAB_PROFILE", "ci")' in conftest
    assert "collect_ignore" not in conftest and "--ignore" not in cfg.get("addopts", "")
    assert NOTEBOOKS, "no notebooks found"


def test_notebooks_are_numbered_and_unique():
    numbers = [p.name[:2] for p in NOTEBOOKS]
    assert all(n.isdigit() for n in numbers) and len(set(numbers)) == len(numbers)


# ====================================================================== form of every notebook
@pytest.fixture(params=NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def nb(request):
    return request.param, _load(request.param)


def test_size_and_kernel(nb):
    path, data = nb
    assert path.stat().st_size < MAX_BYTES, f"{path.name} is {path.stat().st_size / 1e6:.2f} MB"
    assert data["metadata"]["kernelspec"]["name"] == "python3"
    assert data["nbformat"] == 4


def test_opens_and_closes_with_prose(nb):
    _, data = nb
    cells = data["cells"]
    if cells and _sync_module()._is_badge_cell(cells[0]):  # the Open-in-Colab badge may come before the title
        cells = cells[1:]
    assert cells[0]["cell_type"] == "markdown" and _src(cells[0]).lstrip().startswith("#")
    assert cells[-1]["cell_type"] == "markdown"


def test_first_code_cell_is_the_colab_setup(nb):
    _, data = nb
    code = [c for c in data["cells"] if c["cell_type"] == "code"]
    first = _src(code[0])
    assert re.search(r'^REPO_URL = "[^"]+"$', first, re.M)
    assert "google.colab" in first and "subprocess" in first
    assert "pip" in first and "--no-deps" in first and "-e" in first
    assert not re.search(r"^\s*(import spo_lab|from spo_lab)", first, re.M), "spo_lab imported before it is installed"
    assert not re.search(r"^\s*[!%]", first, re.M), "no shell or magic lines: plain Python only"


def test_has_one_parameters_cell_with_profiles(nb):
    _, data = nb
    tagged = [c for c in data["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1
    src = _src(tagged[0])
    assert tagged[0]["cell_type"] == "code"
    assert re.search(r"^PROFILE\s*=", src, re.M) and "SPO_LAB_PROFILE" in src
    for name in ("default", "ci", "colab"):
        assert f'"{name}"' in src


def test_stored_outputs_are_clean(nb):
    path, data = nb
    code = [c for c in data["cells"] if c["cell_type"] == "code"]
    assert all(c.get("execution_count") is not None for c in code), f"{path.name} has unexecuted cells"
    for c in code:
        assert not [o for o in c.get("outputs", []) if o.get("output_type") == "error"], _src(c)[:80]
        for text in _text_outputs(c):
            m = LOCAL_PATH.search(text)
            assert m is None, f"{path.name}: local path {m.group(0)!r} in an output of: {_src(c)[:60]!r}"


def test_checked_cells_have_outputs(nb):
    _, data = nb
    for c in data["cells"]:
        if c["cell_type"] == "code" and _src(c).startswith("# NBVAL_CHECK_OUTPUT"):
            assert c.get("outputs"), "a checked cell needs a stored output to compare with"


def test_notebooks_import_the_library_not_copy_it(nb):
    _, data = nb
    code = "\n".join(_src(c) for c in data["cells"] if c["cell_type"] == "code")
    for name in spo_lab.__all__:
        assert not re.search(rf"^\s*(def|class) {name}\b", code, re.M), f"{name} is re-implemented in a notebook"
    assert "spo_lab" in code


def test_every_notebook_is_in_sync_with_pyproject():
    assert _sync_module().main(["--check"]) == 0


# ====================================================================== spo_lab.teaching.notebook helpers
def test_profile_reads_the_environment(monkeypatch):
    monkeypatch.delenv("SPO_LAB_PROFILE", raising=False)
    assert nbh.profile() == "default" and nbh.profile(default="ci") == "ci"
    monkeypatch.setenv("SPO_LAB_PROFILE", "colab")
    assert nbh.profile() == "colab"
    monkeypatch.setenv("SPO_LAB_PROFILE", "fast")
    with pytest.raises(ValueError, match="SPO_LAB_PROFILE"):
        nbh.profile()


def test_pick():
    settings = {"default": 1, "ci": 2}
    assert nbh.pick(settings, "ci") == 2
    with pytest.raises(ValueError, match="known"):
        nbh.pick(settings, "colab")


def test_in_colab_is_false_here():
    assert nbh.in_colab() is False


def test_repo_url_from_pyproject(monkeypatch):
    url = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
    assert nbh.repo_url() == url
    # the fallback without tomllib / tomli (Python 3.10 without extras) reads the same value
    monkeypatch.setitem(sys.modules, "tomllib", None)
    monkeypatch.setitem(sys.modules, "tomli", None)
    assert nbh.repo_url() == url


def test_repo_url_missing_entry(tmp_path):
    p = tmp_path / "pyproject.toml"
    p.write_text('[project]\nname = "x"\n')
    with pytest.raises(KeyError):
        nbh.repo_url(p)


# ====================================================================== scripts/sync_notebooks.py
def test_sync_rewrites_only_the_url_line(tmp_path):
    sync = _sync_module()
    url = nbh.repo_url()
    src = next(p for p in NOTEBOOKS if sync.sync(p, url, write=False) == "ok")  # one with both parts in place
    target = tmp_path / src.name
    shutil.copy(src, target)
    assert sync.sync(target, url, write=False) == "ok"
    before = _load(target)
    assert sync.sync(target, "https://github.com/someone-else/fork", write=True) == "updated"  # set-up cell and badge
    assert sync.main(["--check", str(target)]) == 1
    assert sync.sync(target, url, write=True) == "updated"
    assert sync.main(["--check", str(target)]) == 0
    assert _load(target) == before  # outputs and every other field untouched


def test_sync_can_add_a_missing_setup_cell(tmp_path):
    sync = _sync_module()
    target = tmp_path / "99_new.ipynb"
    target.write_text(json.dumps({"cells": [{"cell_type": "markdown", "metadata": {}, "source": ["# New"]},
                                            {"cell_type": "code", "execution_count": None, "metadata": {},
                                             "outputs": [], "source": ["print(1)"]}],
                                  "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    assert sync.main(["--check", str(target)]) == 1
    assert sync.sync(target, nbh.repo_url(), write=True, add_missing=True) == "added"
    cells = _load(target)["cells"]
    assert sync._is_badge_cell(cells[0]) and _src(cells[1]) == "# New"  # badge, title, then the set-up cell
    assert f'REPO_URL = "{nbh.repo_url()}"' in _src(cells[2])
    assert sync.main(["--check", str(target)]) == 0
    compile(_src(cells[2]), "colab-cell", "exec")  # the generated cell is valid Python


def test_short_run_returns_long_metrics(toy):
    df = nbh.short_run("grpo-toy", seed=3, algo="grpo", model=str(toy / "model"), data_dir=str(toy / "data"),
                       steps=2, responses_per_step=8, group_size=4, eval_every=2, eval_max_prompts=5)
    assert list(df.columns[:2]) == ["run", "seed"]
    assert (df.run == "grpo-toy").all() and (df.seed == 3).all()
    assert df.step.tolist() == [0, 1, 2] and "group/degenerate_frac" in df.columns


def test_full_scale_notebook_labels_its_cpu_stand_in():
    """Notebook 9's committed CPU outputs say in so many words that they are the tiny stand-in (its parameters cell
    picks the GPU profile "colab" on Colab: tests/test_teaching_notebook.py checks that for every notebook)."""
    data = _load(ROOT / "notebooks" / "09_full_scale.ipynb")
    text = "\n".join(t for c in data["cells"] if c["cell_type"] == "code" for t in _text_outputs(c))
    assert "THIS IS THE TINY CPU STAND-IN, NOT QWEN3" in text
    assert "SYNTHETIC fixtures" in text


def test_the_grpo_to_spo_card_is_the_same_in_the_readme_and_notebook_1():
    """The one-screen card opens notebook 1 and the README; the two copies never drift apart."""
    import json
    import re

    readme = (ROOT / "README.md").read_text()
    card = re.search(r"<!-- grpo-spo-card:start -->\n(.*?)\n<!-- grpo-spo-card:end -->", readme, flags=re.S).group(1)
    nb = json.loads((ROOT / "notebooks" / "01_quickstart.ipynb").read_text())
    cell = next("".join(c["source"]) for c in nb["cells"] if c.get("id") == "grpo-spo-card")
    cell = cell.replace(" **[Path]**", "", 1)  # the reading path's badge on the notebook's heading
    intro, _, rest = cell.partition("\n\n*For readers")
    body = intro + "\n\n" + rest.split("*\n\n", 1)[1]
    assert body == card
    for must in ("num_generations=1", "scale_rewards=\"batch\"", "beta=0.0", "14,000", "+3.4", "+0.3", "D = 0"):
        assert must in card, must
