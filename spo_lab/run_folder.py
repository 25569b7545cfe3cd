"""The run folder contract: one run per folder, checkpoints that cannot run code, nothing lost on a kill.

A run folder (``--out``) holds

    config.json        the run's settings (what ``--resume`` checks against)
    metrics.jsonl      one JSON object per step; a torn last line (killed mid-write) is dropped on resume
    checkpoint.pt      the latest checkpoint: tensors and plain Python values only, loaded with
                       ``torch.load(weights_only=True)`` (no pickle of arbitrary objects, no code runs)
    checkpoint.prev.pt the previous good checkpoint, kept as a fallback
    final_model/       the final policy (when ``save_model``)
    .lock              held (``flock``) while a run writes here

The rules, enforced by :class:`RunFolder`:

- **one writer**: a second run on a folder that is locked is refused with a message naming the folder;
- **no silent overwrite**: a fresh run on a folder that holds another run's results is refused unless
  ``overwrite=True``, which removes those results together (never half) before the new run starts;
- **resume checks the settings**: :func:`config_changes` lists every field that differs from the saved
  ``config.json``; fields that alter the run (algorithm, seed, data, lr, model, ...) refuse the resume,
  the harmless ones (``RESUME_MAY_CHANGE``: more steps, logging, progress, threads) are allowed;
- **atomic writes**: checkpoints go to a uniquely named temporary file, are flushed and renamed; the
  previous one becomes ``checkpoint.prev.pt``. A latest checkpoint that does not load is reported and
  the previous good one is used (its step is said in the message).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import warnings
from pathlib import Path

import torch

__all__ = ["RunFolder", "RunFolderError", "config_changes", "RESUME_MAY_CHANGE", "failpoint"]

RESUME_MAY_CHANGE = frozenset({"steps", "out", "resume", "overwrite", "progress", "save_every", "save_model",
                               "eval_every", "cache_dir", "keep_checkpoints"})
"""Config fields a resumed run may change: they extend the run or change when it logs, not its numbers."""

RESULTS = ("metrics.jsonl", "checkpoint.pt", "checkpoint.prev.pt", "final_model", "config.json", "FINISHED")


class RunFolderError(RuntimeError):
    """A run folder cannot be used as asked (locked, holds another run, resume with changed settings)."""


_HITS: dict[str, int] = {}


def failpoint(name: str, before_kill=None) -> None:
    """Testing hook: ``SPO_LAB_FAILPOINT=name:k`` kills this process with SIGKILL at the k-th pass (default 1).

    Used by the fault-injection tests to die exactly inside a checkpoint or metrics write;
    ``before_kill`` runs first (e.g. to leave half a line behind). Unset, it does nothing.
    """
    spec = os.environ.get("SPO_LAB_FAILPOINT")
    if not spec:
        return
    target, _, count = spec.partition(":")
    if target != name:
        return
    _HITS[name] = _HITS.get(name, 0) + 1
    if _HITS[name] == int(count or 1):
        if before_kill is not None:
            before_kill()
        os.kill(os.getpid(), signal.SIGKILL)


def config_changes(saved: dict, new: dict) -> dict[str, tuple]:
    """``{field: (saved, new)}`` for every field whose value differs (missing fields count as different)."""
    keys = set(saved) | set(new)
    return {k: (saved.get(k), new.get(k)) for k in sorted(keys) if saved.get(k) != new.get(k)}


class RunFolder:
    """One run's folder: lock, config, metrics log and checkpoints (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock_file = None

    # ------------------------------------------------------------------ ownership
    def acquire(self) -> None:
        """Create the folder and take its lock; RunFolderError if another process holds it."""
        self.path.mkdir(parents=True, exist_ok=True)
        f = open(self.path / ".lock", "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise RunFolderError(f"{self.path} is in use by another run (its .lock is held); "
                                 "use another --out or wait for that run to finish") from None
        f.seek(0), f.truncate(), f.write(f"{os.getpid()}\n"), f.flush()
        self._lock_file = f

    def release(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()

    def has_results(self) -> bool:
        return any((self.path / name).exists() for name in RESULTS)

    def start_fresh(self, overwrite: bool) -> None:
        """Prepare a new run: refuse if results exist (unless ``overwrite``), then remove them all."""
        if self.has_results() and not overwrite:
            present = [n for n in RESULTS if (self.path / n).exists()]
            raise RunFolderError(f"{self.path} already holds a run ({', '.join(present)}); pass --resume to "
                                 "continue it, --overwrite to replace it, or choose another --out")
        for name in RESULTS:
            p = self.path / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        for tmp in self.path.glob("*.tmp*"):
            tmp.unlink()

    def check_resume(self, config: dict) -> None:
        """RunFolderError naming every changed field that alters the run."""
        path = self.path / "config.json"
        if not path.exists():
            raise RunFolderError(f"{self.path} has a checkpoint but no config.json: cannot check the settings")
        changes = {k: v for k, v in config_changes(json.loads(path.read_text()), config).items()
                   if k not in RESUME_MAY_CHANGE}
        if changes:
            what = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items())
            raise RunFolderError(f"--resume with settings that change the run: {what}. Start a new run "
                                 "(another --out) for different settings")

    def write_config(self, config: dict) -> None:
        _atomic_write_text(self.path / "config.json", json.dumps(config, indent=2))

    # ------------------------------------------------------------------ metrics
    def open_metrics(self, keep_until_step: int | None):
        """The metrics log for appending. ``keep_until_step``: rows after it (and a torn last line) are dropped."""
        path = self.path / "metrics.jsonl"
        if keep_until_step is None:
            path.write_text("")
        else:
            rows = []
            lines = path.read_text().splitlines() if path.exists() else []
            for i, ln in enumerate(lines):
                if not ln.strip():
                    continue
                try:
                    row = json.loads(ln)
                except json.JSONDecodeError:
                    if i == len(lines) - 1:  # a torn last line from a kill mid-write
                        continue
                    raise RunFolderError(f"{path}:{i + 1}: not valid JSON (only a torn last line is tolerated)")
                if row["step"] <= keep_until_step:
                    rows.append(ln)
            _atomic_write_text(path, "".join(r + "\n" for r in rows))
        return open(path, "a")

    @staticmethod
    def append(log, row: dict) -> None:
        """Append one metrics row as one line and flush it (a kill can tear at most this line)."""
        line = json.dumps(row) + "\n"

        def torn():  # what a kill in the middle of the write leaves behind
            log.write(line[: len(line) // 2]), log.flush()

        failpoint("metrics-write", torn)
        log.write(line)
        log.flush()

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, state: dict) -> None:
        """Write ``state`` atomically; the current checkpoint becomes checkpoint.prev.pt."""
        latest, prev = self.path / "checkpoint.pt", self.path / "checkpoint.prev.pt"
        tmp = self.path / f"checkpoint.pt.tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            torch.save(state, f)
            failpoint("checkpoint-write")
            f.flush()
            os.fsync(f.fileno())
        if latest.exists():
            os.replace(latest, prev)
        os.replace(tmp, latest)

    def remove_checkpoints(self, step: int) -> None:
        """Delete checkpoint.pt and checkpoint.prev.pt of a run finished at ``step``, leaving a FINISHED
        marker so that a later --resume is refused instead of silently starting the run again."""
        _atomic_write_text(self.path / "FINISHED", f"finished at step {step}; checkpoints removed\n")
        for name in ("checkpoint.pt", "checkpoint.prev.pt"):
            (self.path / name).unlink(missing_ok=True)

    def check_extendable(self) -> None:
        """RunFolderError if the run here finished and its checkpoints were removed (nothing to resume from)."""
        marker = self.path / "FINISHED"
        if marker.exists() and not (self.path / "checkpoint.pt").exists():
            raise RunFolderError(f"{self.path}: the run {marker.read_text().strip()} (--no-keep-checkpoints), so it "
                                 "cannot be resumed or extended; use --overwrite to run it again")

    def load_checkpoint(self) -> dict | None:
        """The latest loadable checkpoint, or None if there is none; a corrupt latest falls back to the previous."""
        latest, prev = self.path / "checkpoint.pt", self.path / "checkpoint.prev.pt"
        if not latest.exists() and not prev.exists():
            return None
        if latest.exists():
            try:
                return torch.load(latest, weights_only=True)
            except Exception as err:  # noqa: BLE001 - any failure to read means corrupt
                if not prev.exists():
                    raise RunFolderError(f"{latest} is corrupt ({type(err).__name__}: {err}) and there is no "
                                         "previous checkpoint; start again with --overwrite") from err
                state = torch.load(prev, weights_only=True)
                warnings.warn(f"{latest} is corrupt ({type(err).__name__}); resuming from {prev} "
                              f"(step {state['step']})", stacklevel=2)
                return state
        return torch.load(prev, weights_only=True)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    failpoint(f"write-{path.name}")
    os.replace(tmp, path)
