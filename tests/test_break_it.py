"""The "break it" suite: bad and odd inputs a new user tries, replayed against the command lines.

Each test feeds one bad input to ``python -m spo_lab.evaluate`` or ``python -m spo_lab.train`` (through
:func:`spo_lab.errors.cli_main` in-process, the code path of ``python -m``, or a subprocess where the
process boundary matters) and checks that the answer is one clear line naming the flag, file or line,
with no traceback, and that nothing was written that a corrected command would trip over. Everything
runs on the test session's toy model and data (``conftest.toy``), a few seconds per test.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spo_lab import errors
from spo_lab.errors import UserError, cli_main
from spo_lab.evaluate import main as evaluate_main
from spo_lab.run_folder import RunFolder, RunFolderError, check_writable
from spo_lab.train import Config, parse_args, train

ROOT = Path(__file__).resolve().parent.parent


# ============================================================================ helpers
def cli(fn, argv, capsys) -> tuple[int, str]:
    """Run an entry point as ``python -m`` does (through cli_main); its exit status and stderr."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        cli_main(fn, [str(a) for a in argv])
    return exc.value.code, capsys.readouterr().err


def assert_one_clear_line(err: str, *needles: str) -> None:
    """The error is one line (argparse adds its usage lines above), names what it must, and has no traceback."""
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert "error:" in last, err
    for n in needles:
        assert n in last, f"{n!r} not in {last!r}"
    assert len(last) < 1000, f"{len(last)} characters"


def eval_argv(toy: Path, out: Path, *extra) -> list[str]:
    return ["--task", "arith", "--model", toy / "model", "--data", toy / "data", "--split", "test", "--limit", "3",
            "--n", "2", "--bootstrap", "10", "--device", "cpu", "--out", out, *extra]


def cfg_for(toy: Path, out: Path, **kw) -> Config:
    base = dict(model=str(toy / "model"), data_dir=str(toy / "data"), out=str(out), cache_dir=str(out.parent / "cache"),
                steps=2, responses_per_step=16, group_size=4, n0=2, eval_every=2, save_every=1, progress=False,
                save_model=False, lr=1e-3)
    base.update(kw)
    return Config(**base)


def expected_error(excinfo) -> str:
    """The message of an error the command line prints as one line (an expected error), flattened."""
    assert isinstance(excinfo.value, errors.EXPECTED), f"{type(excinfo.value).__name__} would print a traceback"
    return " ".join(str(excinfo.value).split())


@pytest.fixture(scope="module")
def done_run(toy, tmp_path_factory):
    """A finished 2-step SPO run with both checkpoints (steps 1 and 2); tests damage copies of it."""
    out = tmp_path_factory.mktemp("done") / "run"
    train(cfg_for(toy, out))
    return out


def copy_run(done_run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(done_run, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


# ============================================================================ evaluate: options checked when parsed
@pytest.mark.parametrize("extra, flag", [
    (["--n", "0"], "--n"), (["--n", "-3"], "--n"), (["--temperature", "0"], "--temperature"),
    (["--temperature", "nan"], "--temperature"), (["--temperature", "inf"], "--temperature"),
    (["--top-k", "-5"], "--top-k"), (["--top-p", "0"], "--top-p"), (["--top-p", "2"], "--top-p"),
    (["--bootstrap", "0"], "--bootstrap"), (["--limit", "-1"], "--limit"), (["--batch", "0"], "--batch"),
    (["--max-new-tokens", "0"], "--max-new-tokens"), (["--seed", "-1"], "--seed"), (["--device", "tpu"], "--device"),
    (["--dtype", "int8"], "--dtype"), (["--split", "bogus"], "--split"), (["--split", "test,test"], "--split"),
    (["--task", "chess"], "--task"), (["--out", ""], "--out"), (["--reward", "vibes"], "--reward"),
    (["--benchmark-path", "aime24"], "--benchmark-path"),
])
def test_evaluate_refuses_a_bad_option_when_parsed_and_writes_nothing(toy, tmp_path, capsys, extra, flag):
    out = tmp_path / "eval"
    t0 = time.perf_counter()
    code, err = cli(evaluate_main, [*eval_argv(toy, out), *extra], capsys)
    assert code == 2
    assert_one_clear_line(err, flag)
    assert not out.exists()  # nothing written: the corrected command starts clean
    assert time.perf_counter() - t0 < 3


def test_evaluate_a_corrected_command_runs_and_other_settings_need_overwrite(toy, tmp_path, capsys):
    out = tmp_path / "eval"
    code, _ = cli(evaluate_main, eval_argv(toy, out, "--bootstrap", "0"), capsys)
    assert code == 2 and not out.exists()
    evaluate_main([str(a) for a in eval_argv(toy, out)])  # the corrected command on the same --out
    assert json.loads((out / "run.json").read_text())["seed"] == 0
    code, err = cli(evaluate_main, eval_argv(toy, out, "--seed", "3"), capsys)
    assert code == 2
    assert_one_clear_line(err, "other settings", "--overwrite")
    evaluate_main([str(a) for a in eval_argv(toy, out, "--seed", "3", "--overwrite")])
    assert json.loads((out / "run.json").read_text())["seed"] == 3
    rows = [json.loads(ln) for ln in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 3 * 2  # the old samples are gone, not mixed in


def test_evaluate_a_run_json_left_by_a_failed_run_does_not_block_the_next(toy, tmp_path):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"seed": 99}))  # settings written, no sample made
    evaluate_main([str(a) for a in eval_argv(toy, out)])
    assert json.loads((out / "run.json").read_text())["seed"] == 0


def test_evaluate_on_a_training_run_folder_points_at_final_model(toy, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "final_model").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"algo": "spo", "steps": 2}))
    (run / "metrics.jsonl").write_text('{"step": 0}\n')
    argv = eval_argv(toy, tmp_path / "eval")
    argv[argv.index("--model") + 1] = run
    code, err = cli(evaluate_main, argv, capsys)
    assert code == 2
    assert_one_clear_line(err, "training run folder", str(run / "final_model"))


def test_evaluate_out_holding_a_model_is_refused_and_left_untouched(toy, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(toy / "model", model)
    before = {f.name: f.read_bytes() for f in model.iterdir()}
    code, err = cli(evaluate_main, eval_argv(toy, model, "--overwrite"), capsys)
    assert code == 2
    assert_one_clear_line(err, "--out", "holds a model")
    assert {f.name: f.read_bytes() for f in model.iterdir()} == before


def test_a_model_folder_without_tokenizer_files_is_named(toy, tmp_path, capsys):
    model = tmp_path / "no-tokenizer"
    model.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(toy / "model" / name, model / name)
    argv = eval_argv(toy, tmp_path / "eval")
    argv[argv.index("--model") + 1] = model
    code, err = cli(evaluate_main, argv, capsys)
    assert code == 2
    assert_one_clear_line(err, str(model), "no tokenizer")


def test_a_corrupt_safetensors_file_is_named(toy, tmp_path, capsys):
    model = tmp_path / "corrupt"
    shutil.copytree(toy / "model", model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:2000])  # truncated copy
    argv = eval_argv(toy, tmp_path / "eval")
    argv[argv.index("--model") + 1] = model
    code, err = cli(evaluate_main, argv, capsys)
    assert code == 2
    assert_one_clear_line(err, str(weights), "corrupt")


def test_evaluate_refuses_prompts_longer_than_the_context(toy, tmp_path, capsys):
    code, err = cli(evaluate_main, eval_argv(toy, tmp_path / "eval", "--max-new-tokens", "60"), capsys)
    assert code == 2  # the toy model has 64 positions; prompt + 60 new tokens do not fit
    assert_one_clear_line(err, "max_position_embeddings", "benchmark test", "--max-new-tokens 60")


def test_evaluate_on_a_split_file_reads_its_folder(toy, tmp_path):
    argv = [str(a) for a in eval_argv(toy, tmp_path / "eval")]
    argv[argv.index("--data") + 1] = str(toy / "data" / "test.jsonl")  # the help says a file works
    summary = evaluate_main(argv)
    assert summary["benchmarks"]["test"]["problems"] == 3


def _data_copy(toy: Path, tmp_path: Path, damage) -> Path:
    d = tmp_path / "data"
    shutil.copytree(toy / "data", d)
    rows = [json.loads(ln) for ln in (d / "test.jsonl").read_text().splitlines()]
    damage(rows)
    (d / "test.jsonl").write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return d


@pytest.mark.parametrize("damage, needles", [
    (lambda r: r[1].update(prompt="9" * 1_000_000), ["test.jsonl:2", "prompt", "characters, cut"]),
    (lambda r: r.insert(1, "{" + "x" * 1_000_000), ["test.jsonl:2", "not valid JSON"]),
    (lambda r: r[1].update(level=8), ["test.jsonl:2", "level 8"]),
    (lambda r: r[1].update(level="two"), ["test.jsonl:2", "unknown level"]),
    (lambda r: r.insert(1, '{"operands": [' + "9" * 5000 + ', 1]}'), ["test.jsonl:2", "not readable"]),
])
def test_bad_data_lines_name_file_and_line_and_are_not_echoed_in_full(toy, tmp_path, capsys, damage, needles):
    data = _data_copy(toy, tmp_path, damage)
    argv = eval_argv(toy, tmp_path / "eval")
    argv[argv.index("--data") + 1] = data
    code, err = cli(evaluate_main, argv, capsys)
    assert code == 2
    assert_one_clear_line(err, *needles)


def test_evaluate_expected_errors_print_one_line_in_a_real_process(tmp_path):
    """The real ``python -m`` process: exit 2 and one line (the debug switches: the cli_main test below)."""
    argv = [sys.executable, "-m", "spo_lab.evaluate", "--task", "arith", "--model", "/nonexistent/model",
            "--out", str(tmp_path / "eval")]
    env = {k: v for k, v in os.environ.items() if k != errors.DEBUG_ENV}
    r = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]  # exactly one line
    assert "Traceback" not in r.stderr and "/nonexistent/model" in r.stderr and "does not exist" in r.stderr


# ============================================================================ the command-line wrapper
def test_cli_main_prints_expected_errors_and_keeps_bugs_tracebacks(capsys, monkeypatch):
    monkeypatch.delenv(errors.DEBUG_ENV, raising=False)

    def bad_flag(argv):
        raise UserError("--thing must be >= 1, got 0")

    def missing_file(argv):
        open("/nonexistent/file.jsonl")

    def bug(argv):
        raise RuntimeError("a bug")

    def interrupted(argv):
        raise KeyboardInterrupt

    code, err = cli(bad_flag, [], capsys)
    assert code == 2 and err.count("\n") == 1
    assert_one_clear_line(err, "--thing must be >= 1")
    code, err = cli(missing_file, [], capsys)
    assert code == 2 and "/nonexistent/file.jsonl" in err
    with pytest.raises(RuntimeError, match="a bug"):  # unexpected: the traceback is kept
        cli_main(bug, [])
    code, err = cli(interrupted, [], capsys)
    assert code == 130 and "interrupted" in err
    seen = []
    with pytest.raises(UserError):  # --debug: raised as it is, and the entry point never sees the flag
        cli_main(lambda argv: seen.append(argv) or bad_flag(argv), ["--x", "1", "--debug"])
    assert seen == [["--x", "1"]]
    monkeypatch.setenv(errors.DEBUG_ENV, "1")
    with pytest.raises(UserError):
        cli_main(bad_flag, [])


# ============================================================================ train: run folders
def test_resume_of_a_missing_folder_is_refused_and_creates_nothing(toy, tmp_path):
    out = tmp_path / "typo"
    with pytest.raises(RunFolderError) as exc:
        train(cfg_for(toy, out, resume=True))
    assert str(out) in expected_error(exc) and "does not exist" in str(exc.value)
    assert not out.exists()


def test_resume_of_an_empty_folder_is_refused(toy, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    with pytest.raises(RunFolderError) as exc:
        train(cfg_for(toy, out, resume=True))
    assert "holds no run" in expected_error(exc) and str(out) in str(exc.value)


def test_resume_without_metrics_history_is_refused(toy, tmp_path, done_run):
    out = copy_run(done_run, tmp_path)
    (out / "metrics.jsonl").unlink()
    with pytest.raises(RunFolderError) as exc:
        train(cfg_for(toy, out, steps=3, resume=True))
    assert "metrics.jsonl is missing" in expected_error(exc)
    assert not (out / "metrics.jsonl").exists()  # nothing started


def test_resume_with_holes_in_the_history_is_refused(toy, tmp_path, done_run):
    out = copy_run(done_run, tmp_path)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text(lines[0] + "\n")  # only step 0 left; the checkpoint is at step 2
    with pytest.raises(RunFolderError) as exc:
        train(cfg_for(toy, out, steps=3, resume=True))
    assert "metrics.jsonl" in expected_error(exc) and "step 2" in str(exc.value)


def test_out_holding_a_model_is_refused_even_with_overwrite(toy, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(toy / "model", model)
    config = (model / "config.json").read_text()
    for kw in ({}, {"overwrite": True}, {"resume": True}):
        with pytest.raises(RunFolderError) as exc:
            train(cfg_for(toy, model, **kw))
        assert "holds a model" in expected_error(exc)
    assert (model / "config.json").read_text() == config and not (model / "metrics.jsonl").exists()


def test_an_empty_out_is_refused(toy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RunFolderError) as exc:
        train(Config(**{**cfg_for(toy, Path("x")).__dict__, "out": ""}))
    assert "--out is empty" in expected_error(exc)
    assert list(tmp_path.iterdir()) == []


def test_a_corrupt_config_json_is_named(toy, tmp_path, done_run):
    out = copy_run(done_run, tmp_path)
    (out / "config.json").write_text('{"algo": "spo", "ste')
    with pytest.raises(RunFolderError) as exc:
        train(cfg_for(toy, out, steps=3, resume=True))
    assert str(out / "config.json") in expected_error(exc) and "corrupt" in str(exc.value)


def test_both_checkpoints_corrupt_are_named(toy, tmp_path, done_run):
    out = copy_run(done_run, tmp_path)
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        (out / name).write_bytes((out / name).read_bytes()[:100])
    with pytest.raises(RunFolderError) as exc:
        train(cfg_for(toy, out, steps=3, resume=True))
    msg = expected_error(exc)
    assert "both checkpoints are corrupt" in msg and str(out / "checkpoint.prev.pt") in msg


def test_a_second_process_on_the_same_folder_is_refused(toy, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(  # another process holds the run's lock (the filelock library, as RunFolder does)
        [sys.executable, "-c", "import filelock, sys, time; l = filelock.FileLock(sys.argv[1]); l.acquire(); "
         "print('locked', flush=True); time.sleep(60)", str(out / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderError) as exc:
            train(cfg_for(toy, out, steps=1))
        assert "in use by another run" in expected_error(exc) and str(out) in str(exc.value)
    finally:
        holder.kill()
        holder.wait()


def test_train_on_a_run_folder_as_model_points_at_final_model(toy, tmp_path, done_run):
    with pytest.raises(UserError) as exc:
        train(cfg_for(toy, tmp_path / "new", model=str(done_run)))
    assert "training run folder" in expected_error(exc)


def test_a_corrupt_offline_values_file_is_named(toy, tmp_path):
    values = tmp_path / "values.json"
    values.write_text('{"1+2=": [1, 0,')
    with pytest.raises(UserError) as exc:
        train(cfg_for(toy, tmp_path / "run", offline_values=str(values)))
    assert str(values) in expected_error(exc) and "not valid JSON" in str(exc.value)


def test_check_writable_names_the_flag_and_path(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(UserError, match=r"--cache-dir .*a-file/sub.* is not writable"):
        check_writable(blocker / "sub", "--cache-dir")
    with pytest.raises(UserError, match="--cache-dir .* is a file"):
        check_writable(blocker, "--cache-dir")
    with pytest.raises(UserError, match="--out is empty"):
        check_writable("", "--out")
    made = check_writable(tmp_path / "new" / "deep", "--out")
    assert made.is_dir() and list(made.iterdir()) == []  # the probe file is gone


def test_resume_compares_the_data_by_content(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    saved = {"algo": "spo", "data_dir": "/data/a", "data_fingerprint": "a" * 40}
    folder.write_config(saved)
    with pytest.raises(RunFolderError, match="training data changed"):
        folder.check_resume({**saved, "data_fingerprint": "b" * 40})
    folder.check_resume({**saved, "data_dir": "/data/moved-copy"})  # same content elsewhere: allowed
    with pytest.raises(RunFolderError, match="data_dir"):  # without fingerprints the path still counts
        folder.check_resume({"algo": "spo", "data_dir": "/data/b"})


def test_check_context_length_names_the_longest_prompt(toy):
    from spo_lab.models import check_context_length, load_tokenizer
    from spo_lab.tasks.base import Problem

    tok = load_tokenizer(toy / "model")
    problems = [Problem("p0", "1+2=", "3"), Problem("p1", "1" * 50 + "+2=", "x"), Problem("p2", "3+4=", "7")]
    assert check_context_length({"max_position_embeddings": 64}, tok, problems, 8) == 53
    with pytest.raises(UserError, match=r"prompt 1 \(id p1\) of train\.jsonl is 53 tokens.*61 tokens.*context of 60"):
        check_context_length({"max_position_embeddings": 64}, tok, problems, 8, source="train.jsonl", max_len=60)
    with pytest.raises(UserError, match="prompt 1 of the prompts"):
        check_context_length({"max_position_embeddings": 64}, tok, [p.prompt for p in problems], 20)


# ============================================================================ train: behaviour that needs wiring
def test_train_expected_errors_print_one_line_without_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "spo_lab.train", "--model", "/nonexistent/model", "--out",
                        str(tmp_path / "run"), "--no-progress"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "/nonexistent/model" in r.stderr.strip().splitlines()[-1]


def test_resume_does_not_redo_the_offline_pass(toy, tmp_path, done_run):
    out = copy_run(done_run, tmp_path)
    chunks = []  # another --cache-dir: the cached pass is not found, and must not be needed
    train(cfg_for(toy, out, steps=3, resume=True, cache_dir=str(tmp_path / "other-cache")),
          on_offline_chunk=chunks.append)
    assert chunks == []


def test_an_unwritable_cache_dir_fails_before_the_offline_pass(toy, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    chunks = []
    with pytest.raises(UserError, match="--cache-dir"):
        train(cfg_for(toy, tmp_path / "run", cache_dir=str(blocker / "cache")), on_offline_chunk=chunks.append)
    assert chunks == []


def test_resume_refuses_changed_data_at_the_same_path(toy, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(toy / "data", data)
    out = tmp_path / "run"
    train(cfg_for(toy, out, data_dir=str(data), steps=1))
    lines = (data / "train.jsonl").read_text().splitlines()
    random.Random(0).shuffle(lines)  # same prompts, another order: every tracker entry would move
    (data / "train.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(RunFolderError, match="training data changed"):
        train(cfg_for(toy, out, data_dir=str(data), steps=2, resume=True))


def test_an_unknown_eval_split_is_refused_before_the_model_loads(toy, tmp_path):
    with pytest.raises(ValueError, match="--eval-split"):
        train(cfg_for(toy, tmp_path / "run", eval_split="bogus", model=str(tmp_path / "no-model-here")))


def test_spo_with_one_response_per_step_is_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(["--algo", "spo", "--responses-per-step", "1", "--mini-batches", "1"])
    assert exc.value.code == 2 and "--responses-per-step" in capsys.readouterr().err


def test_train_refuses_prompts_longer_than_the_context(toy, tmp_path):
    chunks = []
    with pytest.raises(UserError, match="max_position_embeddings"):
        train(cfg_for(toy, tmp_path / "run", max_new_tokens=60, steps=1, n0=1), on_offline_chunk=chunks.append)
    assert chunks == []
