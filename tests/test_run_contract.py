"""The run contract (README, "Run folders"): nothing lost, nothing silently wrong.

One test per failure seen when probing the trainer as a careful user: stale caches, resumes with
changed settings, overwritten results, two runs in one folder, settings that hang or go NaN, corrupt
or malicious checkpoints, and data errors that do not say where. Plus fault injection: SIGKILL at
several points, resume, and compare with an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from spo_lab.advantages import spo_advantages
from spo_lab.offline import offline_cache_key
from spo_lab.run_folder import RunFolder, RunFolderError
from spo_lab.sampler import priority_weights, sample_without_replacement
from spo_lab.tasks.arith import ArithTask, load_problems
from spo_lab.train import Config, parse_args, train


def cfg_for(toy: Path, out: Path, **kw) -> Config:
    base = dict(model=str(toy / "model"), data_dir=str(toy / "data"), out=str(out), cache_dir=str(out.parent / "cache"),
                steps=4, responses_per_step=16, group_size=4, n0=2, eval_every=2, save_every=2, progress=False,
                save_model=False, lr=1e-3)
    base.update(kw)
    return Config(**base)


def metrics(out: Path) -> pd.DataFrame:
    df = pd.read_json(out / "metrics.jsonl", lines=True)
    return df[[c for c in df.columns if not c.startswith("time/")]]


# ---------------------------------------------------------------- 1. caches keyed by content, data checked at load
def test_offline_cache_key_changes_with_any_answer_or_prompt(toy):
    probs = ArithTask(toy / "data").load("train")
    key = lambda ps: offline_cache_key("arith", ps, model_key="m", n0=2, temperature=1.0, max_new_tokens=8, seed=0)  # noqa: E731
    import dataclasses

    changed_answer = [dataclasses.replace(probs[0], answer=str(int(probs[0].answer) + 1)), *probs[1:]]
    changed_prompt = [dataclasses.replace(probs[0], prompt=probs[0].prompt + " "), *probs[1:]]
    assert len({key(probs), key(changed_answer), key(changed_prompt)}) == 3


def _write_rows(path: Path, rows: list) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def _rows(toy: Path, split="train") -> list[dict]:
    return [json.loads(ln) for ln in (toy / "data" / f"{split}.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("damage, message", [
    (lambda r: r[3].pop("answer"), r"train\.jsonl:4: missing field 'answer'"),
    (lambda r: r[3].update(answer="12a"), r"train\.jsonl:4: answer '12a' is not"),
    (lambda r: r[3].update(answer=str(int(r[3]["answer"]) + 1)), r"train\.jsonl:4: answer .* is not the sum"),
    (lambda r: r[3].update(colour="red"), r"train\.jsonl:4: unknown field 'colour'"),
    (lambda r: r[3].update(id="000000000000"), r"train\.jsonl:4: id '000000000000' does not match"),
    (lambda r: r.insert(5, dict(r[1])), r"train\.jsonl:6: duplicate prompt .* \(first on line 2\)"),
    (lambda r: r.insert(2, "{not json"), r"train\.jsonl:3: not valid JSON"),
])
def test_data_errors_name_the_file_and_line(toy, tmp_path, damage, message):
    rows = _rows(toy)
    damage(rows)
    (tmp_path / "d").mkdir()
    _write_rows(tmp_path / "d" / "train.jsonl", rows)
    with pytest.raises(ValueError, match=message):
        load_problems("train", tmp_path / "d")


def test_train_test_overlap_is_refused(toy, tmp_path):
    (tmp_path / "d").mkdir()
    train_rows, test_rows = _rows(toy), _rows(toy, "test")
    _write_rows(tmp_path / "d" / "train.jsonl", train_rows)
    _write_rows(tmp_path / "d" / "test.jsonl", [*test_rows, train_rows[7]])
    with pytest.raises(ValueError, match=r"test\.jsonl:31: prompt .* is also in train\.jsonl"):
        ArithTask(tmp_path / "d").load("test")


# ---------------------------------------------------------------- 2. resume checks the settings
def test_resume_refuses_settings_that_change_the_run(toy, tmp_path):
    out = tmp_path / "r"
    train(cfg_for(toy, out, steps=2))
    with pytest.raises(RunFolderError, match=r"lr: 0\.001 -> 0\.01"):
        train(cfg_for(toy, out, steps=4, resume=True, lr=1e-2))
    with pytest.raises(RunFolderError, match=r"algo: 'spo' -> 'grpo'"):
        train(cfg_for(toy, out, steps=4, resume=True, algo="grpo"))
    assert metrics(out).step.max() == 2  # nothing was written by the refused resumes
    train(cfg_for(toy, out, steps=4, resume=True, eval_every=1))  # more steps, other logging: allowed
    assert metrics(out).step.tolist() == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------- 3. no silent overwrite
def test_a_fresh_run_on_a_used_folder_is_refused_unless_overwrite(toy, tmp_path):
    out = tmp_path / "r"
    train(cfg_for(toy, out, steps=2, save_model=True))
    before = (out / "metrics.jsonl").read_text()
    with pytest.raises(RunFolderError, match="already holds a run"):
        train(cfg_for(toy, out, steps=2))
    assert (out / "metrics.jsonl").read_text() == before  # untouched
    train(cfg_for(toy, out, steps=1, overwrite=True, algo="grpo"))
    assert metrics(out).step.max() == 1 and not (out / "final_model").exists()
    assert json.loads((out / "config.json").read_text())["algo"] == "grpo"


# ---------------------------------------------------------------- 4. one writer per folder
def test_a_second_run_on_a_locked_folder_is_refused(toy, tmp_path):
    out = tmp_path / "r"
    holder = RunFolder(out)
    holder.acquire()
    try:
        with pytest.raises(RunFolderError, match="in use by another run"):
            train(cfg_for(toy, out, steps=1))
    finally:
        holder.release()
    train(cfg_for(toy, out, steps=1))  # free again


# ---------------------------------------------------------------- 5. settings checked at parse time, no hang
@pytest.mark.parametrize("argv, flag", [
    (["--priority-eps", "inf"], "--priority-eps"), (["--priority-eps", "0"], "--priority-eps"),
    (["--clip-high", "-0.5"], "--clip-high"), (["--kl-coef", "-1"], "--kl-coef"),
    (["--eval-max-prompts", "-5"], "--eval-max-prompts"), (["--n0", "0"], "--n0"),
    (["--eval-every", "0"], "--eval-every"), (["--lr", "nan"], "--lr"), (["--temperature", "0"], "--temperature"),
    (["--rho-min", "0.99", "--rho-max", "0.9"], "--rho-min"), (["--steps", "-1"], "--steps"),
    (["--max-grad-norm", "inf"], "--max-grad-norm"), (["--d-half", "0"], "--d-half"),
    (["--vllm-sleep"], "--vllm-sleep"), (["--vllm-gpu-memory-utilization", "1.5"], "--vllm-gpu-memory-utilization"),
])
def test_bad_settings_are_argument_errors_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    assert flag in capsys.readouterr().err


def test_infinite_or_nan_weights_raise_instead_of_hanging():
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="eps"):
        priority_weights(torch.full((5,), 0.5), eps=float("inf"))
    for bad in (float("inf"), float("nan")):
        with pytest.raises(ValueError, match="finite"):
            sample_without_replacement(torch.tensor([1.0, bad, 1.0]), 2)
    with pytest.raises(ValueError, match="finite"):
        sample_without_replacement(torch.tensor([1e308, 1e308, 1e308], dtype=torch.float64) * 10, 2)
    with pytest.raises(ValueError, match="finite"):
        spo_advantages(torch.tensor([0.0, float("inf"), 1.0]), torch.zeros(3))
    assert time.perf_counter() - t0 < 5


# ---------------------------------------------------------------- 6. corrupt checkpoints and torn metrics
def test_corrupt_latest_checkpoint_falls_back_to_the_previous(toy, tmp_path):
    full = train(cfg_for(toy, tmp_path / "full", steps=4))
    out = tmp_path / "r"
    train(cfg_for(toy, out, steps=4))  # checkpoints at 2 (prev) and 4 (latest)
    (out / "checkpoint.pt").write_bytes((out / "checkpoint.pt").read_bytes()[:100])  # truncated
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "respo')  # and a torn last line
    with pytest.warns(UserWarning, match=r"corrupt.*step 2"):
        train(cfg_for(toy, out, steps=4, resume=True))
    pd.testing.assert_frame_equal(metrics(full), metrics(out))


# ---------------------------------------------------------------- 7. checkpoints cannot run code
class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {_Payload.marker}",))


def test_a_crafted_checkpoint_does_not_run_code(toy, tmp_path):
    out = tmp_path / "r"
    train(cfg_for(toy, out, steps=2))
    (out / "checkpoint.prev.pt").unlink(missing_ok=True)
    _Payload.marker = tmp_path / "pwned"
    with open(out / "checkpoint.pt", "wb") as f:
        pickle.dump({"step": _Payload()}, f)
    with pytest.raises(RunFolderError, match="corrupt"):
        train(cfg_for(toy, out, steps=4, resume=True))
    assert not _Payload.marker.exists()


# ---------------------------------------------------------------- fault injection: SIGKILL, resume, compare
def _run(toy: Path, out: Path, failpoint: str | None, resume: bool) -> int:
    cfg = cfg_for(toy, out, steps=5, save_every=2, save_model=True, resume=resume)
    code = f"import json; from spo_lab.train import Config, train; train(Config(**json.loads({json.dumps(json.dumps(cfg.__dict__))})))"
    env = {**os.environ, "SPO_LAB_FAILPOINT": failpoint or ""}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True).returncode


@pytest.fixture(scope="module")
def uninterrupted(toy, tmp_path_factory):
    ref = tmp_path_factory.mktemp("uninterrupted") / "run"
    assert _run(toy, ref, None, resume=False) == 0
    return ref


@pytest.mark.parametrize("failpoint", ["metrics-write:3", "checkpoint-write:2", "metrics-write:6",
                                       "write-config.json:1"])
def test_killed_runs_resume_to_the_uninterrupted_result(toy, tmp_path, uninterrupted, failpoint):
    """Killed in the 3rd metrics write (before any checkpoint), in the 2nd checkpoint write, in the last
    metrics write, and while writing config.json; each resumed run ends exactly like the uninterrupted one."""
    ref = uninterrupted
    out = tmp_path / "killed"
    assert _run(toy, out, failpoint, resume=False) == -9  # SIGKILL
    assert _run(toy, out, None, resume=True) == 0
    pd.testing.assert_frame_equal(metrics(ref), metrics(out))
    from safetensors.torch import load_file

    a = load_file(ref / "final_model" / "model.safetensors")
    b = load_file(out / "final_model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_offline_values_file_must_cover_every_prompt(toy, tmp_path):
    from spo_lab.offline import export_official_values

    probs = ArithTask(toy / "data").load("train")
    path = tmp_path / "values.json"
    export_official_values(path, probs[:-1], torch.ones(len(probs) - 1), torch.full((len(probs) - 1,), 2.0))
    with pytest.raises(ValueError, match="missing"):
        train(cfg_for(toy, tmp_path / "r", steps=1, offline_values=str(path)))
    export_official_values(path, probs, torch.ones(len(probs)), torch.full((len(probs),), 2.0))
    out = train(cfg_for(toy, tmp_path / "r2", steps=1, offline_values=str(path)))
    assert metrics(out).responses_incl_init.iloc[-1] == 16 + 2 * len(probs)


def test_a_missing_model_folder_is_named(tmp_path):
    from spo_lab.models import load_policy

    with pytest.raises(FileNotFoundError, match=r"model folder '/nonexistent' does not exist"):
        load_policy("/nonexistent")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_policy(tmp_path / "no-such-model")
