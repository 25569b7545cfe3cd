"""Small helpers shared by the notebooks: run profiles, Colab detection, the repository address.

Every notebook runs in one of three profiles, chosen by the environment variable ``SPO_LAB_PROFILE``
(unset: ``"colab"`` inside Google Colab, ``"default"`` anywhere else):

- ``"default"`` -- a laptop CPU, at most about 5 minutes per notebook;
- ``"ci"``      -- the test suite (``pytest --nbval-lax notebooks``), well under a minute;
- ``"colab"``   -- a free Colab instance, larger where that makes the picture clearer.

    PROFILE = profile()
    CFG = pick({"default": dict(steps=200), "ci": dict(steps=20), "colab": dict(steps=1000)}, PROFILE)
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from pathlib import Path

from ..paths import user_cache_dir
from . import style

__all__ = ["NOTEBOOK_PROFILES", "PROFILES", "profile", "pick", "in_colab", "repo_url", "setup", "notebook_cache_dir", "short_run"]

NOTEBOOK_PROFILES = ("default", "ci", "colab")
"""The notebooks' profiles (not :data:`spo_lab.profiles.PROFILES`, the GPU training profiles)."""
PROFILES = NOTEBOOK_PROFILES  # the old name, kept for one release
ENV_VAR = "SPO_LAB_PROFILE"
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def profile(default: str = "default") -> str:
    """The run profile: ``$SPO_LAB_PROFILE`` if set (and not empty), else ``"colab"`` inside a Google
    Colab kernel (:func:`in_colab`), else ``default``. An explicit environment variable always wins.

    Raises ValueError for a name outside :data:`NOTEBOOK_PROFILES`.
    """
    name = os.environ.get(ENV_VAR, "").strip() or ("colab" if in_colab() else default)
    if name not in NOTEBOOK_PROFILES:
        raise ValueError(f"{ENV_VAR} must be one of {NOTEBOOK_PROFILES}, got {name!r}")
    return name


def pick(profiles: dict, name: str):
    """``profiles[name]``, with a ValueError naming the known profiles if ``name`` is missing."""
    if name not in profiles:
        raise ValueError(f"no settings for profile {name!r}; known: {sorted(profiles)}")
    return profiles[name]


def in_colab() -> bool:
    """True inside a Google Colab kernel."""
    return "google.colab" in sys.modules


def repo_url(pyproject: str | Path = PYPROJECT) -> str:
    """The ``Repository`` entry of ``[project.urls]`` in pyproject.toml: the one place it is declared.

    ``pyproject`` defaults to the source checkout's file (an editable or Colab install has one).

    Read with ``tomllib`` (Python >= 3.11), else ``tomli`` if installed, else a small regular
    expression over the ``[project.urls]`` table.
    """
    text = Path(pyproject).read_text(encoding="utf-8")
    try:
        import tomllib  # Python >= 3.11
    except ImportError:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            tomllib = None
    if tomllib is not None:
        url = tomllib.loads(text).get("project", {}).get("urls", {}).get("Repository")
    else:  # Python 3.10 without tomli
        table = re.search(r"^\[project\.urls\]\s*$(.*?)(?=^\[|\Z)", text, re.M | re.S)
        m = table and re.search(r'^\s*Repository\s*=\s*"([^"]+)"', table.group(1), re.M)
        url = m.group(1) if m else None
    if not url:
        raise KeyError(f"no [project.urls] Repository entry in {pyproject}")
    return url


def setup(dpi: int = style.DPI, threads: int = 1) -> None:
    """Notebook defaults: one torch thread, PNG figures in the :mod:`.style` at ``dpi``, quiet Hugging Face loaders."""

    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    # tqdm.auto warns (with a site-packages path) when ipywidgets is missing; bars are off anyway.
    warnings.filterwarnings("ignore", message="IProgress not found")
    style.apply(dpi)
    # Read by huggingface_hub / transformers when they are first imported; no /work paths in outputs.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if "transformers" in sys.modules:  # already imported: switch its bars off directly
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()


def notebook_cache_dir() -> Path:
    """Where the notebooks' helpers cache what they computed: ``notebooks/`` in the per-user cache folder
    (:func:`spo_lab.paths.user_cache_dir`; ``~/.cache/spo_lab/notebooks`` on Linux, or
    ``$SPO_LAB_CACHE_DIR/notebooks``). Private to the user, unlike the shared system temp folder; safe to delete.
    """
    return user_cache_dir("notebooks")


def short_run(run: str, seed: int = 0, **config):
    """Train ``spo_lab.train.Config(**config)`` in a temporary folder; return its metrics rows.

    The rows are the trainer's ``metrics.jsonl`` with two columns added, ``run`` (= ``run``) and
    ``seed``, the long format the :mod:`spo_lab.teaching.runs` helpers take. No progress bar, no saved
    model. The offline-init counts are cached in :func:`notebook_cache_dir` (the per-user cache folder,
    ``$SPO_LAB_CACHE_DIR`` if set), so SPO runs share their offline pass across sessions and notebooks.
    """
    import tempfile

    import pandas as pd

    from ..train import Config, train

    cache = notebook_cache_dir()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Config(**{"progress": False, "save_model": False, "save_every": 0, "cache_dir": str(cache),
                        "num_threads": 1, **config, "seed": seed, "out": str(Path(tmp) / run)})
        out = train(cfg)
        df = pd.read_json(out / "metrics.jsonl", lines=True)
    df.insert(0, "seed", seed)
    df.insert(0, "run", run)
    return df
