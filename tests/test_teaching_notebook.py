"""Run profiles on Colab (spo_lab.teaching.notebook), the Open-in-Colab badge (scripts/sync_notebooks.py), and
the exercises at the end of notebooks 02, 03, 04, 05 and 08.

The exercises check themselves under nbval with the reference solution; here each check cell is also run
with a wrong answer, which it must reject.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from scripts_module import load_script  # noqa: E402
from spo_lab.teaching import notebook as nbh  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WITH_EXERCISE_CHECKS = ["02_degenerate_groups", "03_value_tracker", "04_advantages", "05_prioritized_sampling",
                        "08_sync_barriers"]  # exercises whose check cells need only the parameters and import cells
NOTEBOOKS = [ROOT / "notebooks" / f"{name}.ipynb" for name in WITH_EXERCISE_CHECKS]
ALL = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _sync_module():
    return load_script("sync_notebooks")


def _src(cell) -> str:
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else s


def _cells(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def _tags(cell):
    return cell.get("metadata", {}).get("tags", [])


# ====================================================================== profile() on Colab
def test_profile_is_colab_inside_colab_unless_the_environment_says_otherwise(monkeypatch):
    monkeypatch.delenv("SPO_LAB_PROFILE", raising=False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    assert nbh.profile() == "default" and nbh.profile(default="ci") == "ci"
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    assert nbh.in_colab() and nbh.profile() == "colab"
    monkeypatch.setenv("SPO_LAB_PROFILE", "ci")  # an explicit choice wins, on Colab too
    assert nbh.profile() == "ci"
    monkeypatch.setenv("SPO_LAB_PROFILE", "")  # empty counts as unset
    assert nbh.profile() == "colab"


@pytest.mark.parametrize("path", ALL, ids=[p.stem for p in ALL])
def test_parameters_cell_picks_colab_on_colab(path, monkeypatch):
    params = next(_src(c) for c in _cells(path) if "parameters" in _tags(c))

    def chosen():
        ns: dict = {}
        exec(params, ns)  # the cell only reads the profile and defines SETTINGS
        return ns["PROFILE"]

    monkeypatch.delenv("SPO_LAB_PROFILE", raising=False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    assert chosen() == "default"
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    assert chosen() == "colab"
    monkeypatch.setenv("SPO_LAB_PROFILE", "ci")
    assert chosen() == "ci"


# ====================================================================== the Colab badge
def test_badge_is_built_from_the_repository_url():
    sync = _sync_module()
    expected = ("[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
                "(https://colab.research.google.com/github/someone/some_repo/blob/main/notebooks/04_advantages.ipynb)")
    for url in ("https://github.com/someone/some_repo", "https://github.com/someone/some_repo/",
                "https://github.com/someone/some_repo.git"):
        assert sync.colab_badge_source(url, "04_advantages.ipynb") == expected
    with pytest.raises(ValueError, match="github"):
        sync.colab_badge_source("https://gitlab.com/someone/some_repo", "x.ipynb")


@pytest.mark.parametrize("path", ALL, ids=[p.stem for p in ALL])
def test_committed_badges_are_first_and_correct(path):
    sync = _sync_module()
    first = _cells(path)[0]
    assert first["cell_type"] == "markdown"
    assert _src(first).strip() == sync.colab_badge_source(nbh.repo_url(), path.name)
    assert sync.main(["--check", str(path)]) == 0


def _new_notebook(path: Path, cells=None):
    cells = cells or [{"cell_type": "markdown", "metadata": {}, "source": ["# New"]},
                      {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": ["print(1)"]}]
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))


def test_check_finds_a_missing_or_wrong_badge_and_add_missing_fixes_only_the_paths_given(tmp_path, capsys):
    sync = _sync_module()
    url = nbh.repo_url()
    a, b = tmp_path / "97_a.ipynb", tmp_path / "98_b.ipynb"
    _new_notebook(a)
    _new_notebook(b)
    assert sync.main(["--add-missing", str(a)]) == 0
    assert sync.main(["--check", str(a)]) == 0
    assert sync.main(["--check", str(b)]) == 1  # b was not named: untouched
    assert "badge missing" in capsys.readouterr().out
    assert len(_cells(b)) == 2

    # a stale badge (another repository, another file name) is reported by --check and rewritten in place
    cells = _cells(a)
    cells[0]["source"] = [sync.colab_badge_source("https://github.com/old/place", "00_old.ipynb")]
    a.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    parts: dict = {}
    assert sync.sync(a, url, write=False, parts=parts) == "would update" and parts["badge"] == "changed"
    assert sync.main(["--check", str(a)]) == 1
    assert sync.main([str(a)]) == 0
    assert _src(_cells(a)[0]) == sync.colab_badge_source(url, a.name)
    assert sync.main(["--check", str(a)]) == 0


def test_add_missing_puts_the_setup_cell_after_an_existing_badge_and_title(tmp_path):
    sync = _sync_module()
    url = nbh.repo_url()
    target = tmp_path / "96_c.ipynb"
    _new_notebook(target, [{"cell_type": "markdown", "metadata": {}, "source": [sync.colab_badge_source(url, target.name)]},
                           {"cell_type": "markdown", "metadata": {}, "source": ["# Title"]}])
    parts: dict = {}
    assert sync.sync(target, url, write=True, add_missing=True, parts=parts) == "added"
    assert parts == {"set-up cell": "added", "badge": "ok"}
    cells = _cells(target)
    assert [c["cell_type"] for c in cells] == ["markdown", "markdown", "code"] and _src(cells[1]) == "# Title"


# ====================================================================== the exercises
def _exercises(path: Path):
    """(exercise cell, check cell) pairs: a cell with `answer = None  # your code here`, then a cell tagged "check"."""
    cells = _cells(path)
    pairs = []
    for i, c in enumerate(cells):
        if c["cell_type"] == "code" and _src(c).strip().startswith("answer = None  # your code here"):
            check = cells[i + 1]
            assert check["cell_type"] == "code" and "check" in _tags(check), _src(check)[:80]
            pairs.append((_src(c), _src(check)))
    return cells, pairs


@pytest.mark.parametrize("path", NOTEBOOKS, ids=WITH_EXERCISE_CHECKS)
def test_exercises_accept_the_reference_and_reject_a_wrong_answer(path, monkeypatch):
    monkeypatch.setenv("SPO_LAB_PROFILE", "ci")
    cells, pairs = _exercises(path)
    assert 2 <= len(pairs) <= 3
    assert cells[-1]["cell_type"] == "markdown"
    last_exercise = max(i for i, c in enumerate(cells) if "check" in _tags(c))
    assert all(c["cell_type"] == "markdown" for c in cells[last_exercise + 1:])  # the exercises end the notebook
    ns: dict = {}
    for c in cells:  # the parameters and import cells are all a check cell needs
        if "parameters" in _tags(c):
            exec(_src(c), ns)
            break
    first_code_after_params = next(_src(c) for c in cells if c["cell_type"] == "code"
                                   and "parameters" not in _tags(c) and "colab-setup" not in _tags(c))
    exec(first_code_after_params, ns)
    for exercise, check in pairs:
        exec(exercise, ns)
        assert ns["answer"] is None
        exec(check, ns)  # fills in the reference solution and passes
        reference = ns["answer"]
        assert reference is not None
        ns["answer"] = reference + 1  # every answer here is a number that 1 more makes wrong
        with pytest.raises(AssertionError):
            exec(check, ns)


# ====================================================================== the notebooks' cache
def test_notebook_cache_is_in_the_per_user_cache_folder(monkeypatch, tmp_path):
    import tempfile

    monkeypatch.delenv("SPO_LAB_CACHE_DIR", raising=False)
    default = nbh.notebook_cache_dir()
    assert default.name == "notebooks" and "spo_lab" in default.parts
    assert Path(tempfile.gettempdir()) not in default.parents  # not the temp folder every user shares
    monkeypatch.setenv("SPO_LAB_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert nbh.notebook_cache_dir() == tmp_path / "elsewhere" / "notebooks"


def test_short_run_hands_the_cache_folder_to_the_trainer(monkeypatch, tmp_path):
    import spo_lab.train

    monkeypatch.setenv("SPO_LAB_CACHE_DIR", str(tmp_path))
    seen = {}

    def fake_train(cfg):
        seen["cache_dir"] = cfg.cache_dir
        out = Path(cfg.out)
        out.mkdir(parents=True)
        (out / "metrics.jsonl").write_text('{"step": 0, "reward/mean": 0.5}\n')
        return out

    monkeypatch.setattr(spo_lab.train, "train", fake_train)
    df = nbh.short_run("spo", seed=2, algo="spo")
    assert seen["cache_dir"] == str(tmp_path / "notebooks")
    assert list(df.columns[:2]) == ["run", "seed"] and df.seed.tolist() == [2]
