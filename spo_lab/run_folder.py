"""The run folder contract: one run per folder, checkpoints that cannot run code, nothing lost on a kill.

A run folder (``--out``) holds

    config.json        the run's settings (what ``--resume`` checks against)
    metrics.jsonl      one JSON object per step; a torn last line (killed mid-write) is dropped on resume
    checkpoint.pt      the latest checkpoint: tensors and plain Python values only, loaded with
                       ``torch.load(weights_only=True)`` (no pickle of arbitrary objects, no code runs)
    checkpoint.prev.pt the previous good checkpoint, kept as a fallback
    final_model/       the final policy (when ``save_model``)
    .lock              held (``filelock``, any OS) while a run writes here

The rules, enforced by :class:`RunFolder`:

- **one writer**: a second run on a folder that is locked is refused with a message naming the folder;
- **a run folder, not something else**: ``--out ""`` (the working directory) and a folder that holds a
  model (a model ``config.json``, weights, tokenizer files) are refused, ``--overwrite`` or not;
- **no silent overwrite**: a fresh run on a folder that holds another run's results is refused unless
  ``overwrite=True``, which removes those results together (never half) before the new run starts;
- **resume resumes something**: a missing or empty folder, and a checkpoint whose ``metrics.jsonl`` is
  gone (the run's history), are refused with a message naming what is missing (:meth:`RunFolder.check_resumable`);
- **resume checks the settings**: :func:`config_changes` lists every field that differs from the saved
  ``config.json``; fields that alter the run (algorithm, seed, data, lr, model, ...) refuse the resume,
  the harmless ones (``RESUME_MAY_CHANGE``: more steps, logging, progress, threads) are allowed. The
  training data are compared by content: a ``data_fingerprint`` in the config (sha1 of every problem)
  that changed is refused even when the path did not, and a moved copy of the same data is accepted;
- **atomic writes**: checkpoints go to a uniquely named temporary file, are flushed and renamed; the
  previous one becomes ``checkpoint.prev.pt``. A latest checkpoint that does not load is reported and
  the previous good one is used (its step is said in the message).

Every refusal is a :class:`RunFolderError` (a :class:`~spo_lab.errors.UserError`) naming the folder or file.
:func:`check_writable` checks any output path (``--out``, ``--cache-dir``) before expensive work starts.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import warnings
from pathlib import Path

import filelock
import torch

from .errors import UserError

__all__ = ["RunFolder", "RunFolderError", "config_changes", "RESUME_MAY_CHANGE", "failpoint", "check_writable",
           "model_files", "DATA_FINGERPRINT"]

RESUME_MAY_CHANGE = frozenset({"steps", "out", "resume", "overwrite", "progress", "save_every", "save_model",
                               "eval_every", "cache_dir", "keep_checkpoints"})
"""Config fields a resumed run may change: they extend the run or change when it logs, not its numbers."""

RESULTS = ("metrics.jsonl", "checkpoint.pt", "checkpoint.prev.pt", "final_model", "config.json", "FINISHED",
           "samples.jsonl")
"""What a run writes into its folder: what --overwrite removes, and what makes a folder hold a run."""

DATA_FINGERPRINT = "data_fingerprint"
"""Config key of the training data's content fingerprint (:func:`spo_lab.tasks.problems_fingerprint`)."""

MODEL_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "merges.txt",
               "special_tokens_map.json", "generation_config.json", "adapter_config.json")
"""Files that mark a folder as a model (with ``*.safetensors`` / ``*.bin`` weights and a model config.json)."""


class RunFolderError(UserError):
    """A run folder cannot be used as asked (locked, holds another run or a model, nothing to resume,
    resume with changed settings or data, corrupt files); the message names the folder or file."""


def check_writable(path: str | Path, flag: str) -> Path:
    """Make sure ``path`` is a folder this process can write into; create it if needed.

    Writes and removes a probe file, so a read-only disk, a folder without write permission or a path
    through a file fails here, in a second, instead of after hours of work. ``flag`` (e.g. ``"--cache-dir"``)
    is named in the :class:`~spo_lab.errors.UserError` raised otherwise. Returns the path.
    """
    if not str(path).strip():
        raise UserError(f"{flag} is empty: give a folder (an empty path would write into the working directory)")
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise UserError(f"{flag} {str(p)!r} is a file, not a folder")
    probe = p / f".spo_lab-write-probe-{os.getpid()}"
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise UserError(f"{flag} {str(p)!r} is not writable ({err.strerror or type(err).__name__}"
                        f"{f': {err.filename}' if err.filename and str(err.filename) != str(probe) else ''})") from None
    return p


def model_files(path: str | Path) -> list[str]:
    """The files in ``path`` that belong to a model checkpoint (weights, tokenizer, a model config.json)."""
    p = Path(path)
    if not p.is_dir():
        return []
    found = sorted(f.name for f in p.iterdir() if f.name in MODEL_FILES or f.suffix in (".safetensors", ".bin"))
    config = p / "config.json"
    if config.is_file():
        try:
            saved = json.loads(config.read_text())
        except (ValueError, OSError):
            saved = None
        if isinstance(saved, dict) and ("model_type" in saved or "architectures" in saved) and "algo" not in saved:
            found.insert(0, "config.json (a model config)")
    return found


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
        if not str(path).strip():
            raise RunFolderError("--out is empty: give the run a folder (an empty path would write its files "
                                 "into the working directory)")
        self.path = Path(path)
        self._lock = None
        self._created = False  # acquire() made the folder: a refused run removes it again

    # ------------------------------------------------------------------ ownership
    def acquire(self) -> None:
        """Create the folder and take its lock; RunFolderError if another process holds it.

        The lock is an OS file lock (``filelock``: ``flock`` on POSIX, ``msvcrt`` on Windows), released by
        the OS when the process dies, so a killed run never leaves a stale lock behind.
        """
        self._created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunFolderError(f"--out {str(self.path)!r} cannot be created ({err.strerror or err})") from None
        lock = filelock.FileLock(self.path / ".lock", timeout=0)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise RunFolderError(f"{self.path} is in use by another run (its .lock is held); "
                                 "use another --out or wait for that run to finish") from None
        except OSError as err:
            raise RunFolderError(f"--out {str(self.path)!r} is not writable ({err.strerror or err})") from None
        self._lock = lock

    def release(self) -> None:
        """Release the lock; a folder this run created and left empty (a refused run) is removed."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None
            if self._created and {p.name for p in self.path.iterdir()} <= {".lock"}:
                (self.path / ".lock").unlink(missing_ok=True)
                try:
                    self.path.rmdir()
                except OSError:
                    pass

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()

    def has_results(self) -> bool:
        return any((self.path / name).exists() for name in RESULTS)

    def check_not_model(self) -> None:
        """RunFolderError if the folder holds a model: ``--overwrite`` must never replace a model's files."""
        found = model_files(self.path)
        if found:
            raise RunFolderError(f"--out {self.path} holds a model ({', '.join(found[:4])}), not a run; a run needs "
                                 "its own folder (pass the model as --model and choose another --out)")

    def start_fresh(self, overwrite: bool) -> None:
        """Prepare a new run: refuse a model folder, and results unless ``overwrite``; then remove them all."""
        self.check_not_model()
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

    def read_config(self) -> dict:
        """The saved ``config.json``; RunFolderError naming the file when it is unreadable or not a JSON object."""
        path = self.path / "config.json"
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RunFolderError(f"{self.path} has no config.json: cannot check the settings to resume") from None
        except (OSError, ValueError) as err:  # ValueError: bad JSON or bad UTF-8
            raise RunFolderError(f"{path} is corrupt ({type(err).__name__}: {err}); it holds the run's settings, "
                                 "so the run cannot be resumed: restore it, or start again with --overwrite") from None
        if not isinstance(saved, dict):
            raise RunFolderError(f"{path} is corrupt: expected a JSON object of settings, got {type(saved).__name__}")
        return saved

    def check_resumable(self) -> None:
        """RunFolderError unless the folder holds a run that ``--resume`` can continue, naming what is missing.

        Refused: a folder that does not exist (a typo) or holds no run; a run that finished and dropped its
        checkpoints; a checkpoint without ``metrics.jsonl`` (continuing would lose the run's history, and
        its first remaining row would pass for the start); a folder that holds a model.
        """
        hint = "check the path, or leave out --resume to start a new run"
        if self._created or not self.path.is_dir():
            raise RunFolderError(f"--resume: {self.path} does not exist, so there is no run to resume; {hint}")
        self.check_not_model()
        if not self.has_results():
            raise RunFolderError(f"--resume: {self.path} holds no run (no config.json, metrics.jsonl or "
                                 f"checkpoint.pt); {hint}")
        marker = self.path / "FINISHED"
        checkpoints = [n for n in ("checkpoint.pt", "checkpoint.prev.pt") if (self.path / n).exists()]
        if marker.exists() and not checkpoints:
            raise RunFolderError(f"{self.path}: the run {marker.read_text().strip()} (--no-keep-checkpoints), so it "
                                 "cannot be resumed or extended; use --overwrite to run it again")
        if checkpoints and not (self.path / "metrics.jsonl").exists():
            raise RunFolderError(f"--resume: {self.path} has {checkpoints[0]} but its metrics.jsonl is missing: "
                                 "continuing would lose the run's history; restore metrics.jsonl, or start again "
                                 "with --overwrite")

    check_extendable = check_resumable  # the older name of the same check

    def check_resume(self, config: dict, defaults: dict | None = None) -> None:
        """RunFolderError naming every changed field that alters the run; changed training data first.

        ``defaults``: each setting's default; a setting the saved run does not have (it was added later)
        counts as unchanged when the new run keeps that default.

        A ``data_fingerprint`` saved and given that differ mean the training data changed (content, not
        path): every prompt's tracker entry would belong to another prompt. When both are there and
        equal, a changed ``data_dir`` is a moved copy of the same data and is allowed.
        """
        saved = self.read_config()
        old_fp, new_fp = saved.get(DATA_FINGERPRINT), config.get(DATA_FINGERPRINT)
        if old_fp is not None and new_fp is not None and old_fp != new_fp:
            raise RunFolderError(
                f"--resume: the training data changed since the run started (content fingerprint {old_fp[:12]} -> "
                f"{new_fp[:12]}; data: {saved.get('data_dir')!r} -> {config.get('data_dir')!r}): prompts would be "
                "matched to another prompt's tracker state. Restore the data, or start a new run (another --out)")
        ignore = set(RESUME_MAY_CHANGE)
        if old_fp is None or new_fp is None:
            ignore.add(DATA_FINGERPRINT)  # a run saved before fingerprints were kept: compared by path only
        else:
            ignore.add("data_dir")  # same content at another path
        if defaults:
            saved = {**{k: v for k, v in defaults.items() if k in config}, **saved}
        changes = {k: v for k, v in config_changes(saved, config).items() if k not in ignore}
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
                if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                    raise RunFolderError(f"{path}:{i + 1}: not a metrics row (no integer 'step')")
                if row["step"] <= keep_until_step:
                    rows.append((row["step"], ln))
            steps = [st for st, _ in rows]
            if steps != list(range(keep_until_step + 1)):  # every step logs one row, the checkpoint's included
                missing = sorted(set(range(keep_until_step + 1)) - set(steps))
                what = (f"rows of steps {missing[:5]}{'...' if len(missing) > 5 else ''} are missing" if missing
                        else "its rows are out of order or repeated")
                raise RunFolderError(f"{path}: the checkpoint is at step {keep_until_step} but {what}: continuing "
                                     "would leave holes in the run's history; restore the file, or start again "
                                     "with --overwrite")
            _atomic_write_text(path, "".join(ln + "\n" for _, ln in rows))
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

    def load_checkpoint(self) -> dict | None:
        """The latest loadable checkpoint, or None if there is none; a corrupt latest falls back to the previous."""
        latest, prev = self.path / "checkpoint.pt", self.path / "checkpoint.prev.pt"
        if not latest.exists() and not prev.exists():
            return None
        if latest.exists():
            try:
                return _load_state(latest)
            except Exception as err:  # noqa: BLE001 - any failure to read means corrupt
                if not prev.exists():
                    raise RunFolderError(f"{latest} is corrupt ({type(err).__name__}: {_first_line(err)}) and there "
                                         "is no previous checkpoint; start again with --overwrite") from err
                try:
                    state = _load_state(prev)
                except Exception as err_prev:  # noqa: BLE001
                    raise RunFolderError(f"both checkpoints are corrupt: {latest} ({type(err).__name__}) and {prev} "
                                         f"({type(err_prev).__name__}: {_first_line(err_prev)}); start again with "
                                         "--overwrite") from err_prev
                warnings.warn(f"{latest} is corrupt ({type(err).__name__}); resuming from {prev} "
                              f"(step {state['step']})", stacklevel=2)
                return state
        try:
            return _load_state(prev)
        except Exception as err:  # noqa: BLE001
            raise RunFolderError(f"{prev} is corrupt ({type(err).__name__}: {_first_line(err)}) and there is no "
                                 "later checkpoint; start again with --overwrite") from err


def _load_state(path: Path) -> dict:
    """A checkpoint: plain values and tensors only (``weights_only``), and at least a step count."""
    state = torch.load(path, weights_only=True)
    if not isinstance(state, dict) or "step" not in state:
        raise ValueError("not a spo_lab checkpoint (no step)")
    return state


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else ""


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    failpoint(f"write-{path.name}")
    os.replace(tmp, path)
