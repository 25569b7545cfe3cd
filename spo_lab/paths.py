"""Where spo_lab keeps files that are not results: one per-user cache folder.

The offline pass (:mod:`spo_lab.offline`) and the notebooks' helpers cache what they computed so the
next run reads it instead of paying again. They keep it in the platform's per-user cache folder
(``~/.cache/spo_lab`` on Linux, ``~/Library/Caches/spo_lab`` on macOS, ``%LOCALAPPDATA%`` on
Windows), never in the working directory or the shared system temp folder. The environment variable
``SPO_LAB_CACHE_DIR`` replaces that folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

__all__ = ["CACHE_ENV", "user_cache_dir"]

CACHE_ENV = "SPO_LAB_CACHE_DIR"
"""Environment variable that overrides the per-user cache folder."""


def user_cache_dir(*parts: str) -> Path:
    """``$SPO_LAB_CACHE_DIR/parts...`` if the variable is set, else the platform's user cache folder.

    Nothing is created here: the writer makes the folder when it first writes.
    """
    root = os.environ.get(CACHE_ENV) or platformdirs.user_cache_dir("spo_lab", appauthor=False)
    return Path(root).expanduser().joinpath(*parts)
