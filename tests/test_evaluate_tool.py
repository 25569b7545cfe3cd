"""``python -m spo_lab.evaluate`` with the Python tool: the trainer's ToolEngine and sandbox flags, the tool-call rate
in the summary, the refusals (a tool task without the tool, the math tool style without it), and the math task's
tool prompt on the bundled fixtures."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from spo_lab.evaluate import build_parser, main, tool_use
from spo_lab.tasks import arith_tool as at

ROOT = Path(__file__).resolve().parent.parent
TOOL_MODEL = ROOT / "data" / "tiny-qwen3-tool"
FIX = ROOT / "data" / "math-fixtures"
BOX = ["--tool-timeout-s", "10", "--tool-memory-mb", "512"]  # a product needs little


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


def test_arith_tool_is_evaluated_with_the_tool_and_reports_the_call_rate(tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["--task", "arith_tool", "--model", str(TOOL_MODEL), "--split", "test", "--limit", "12", "--n", "4",
            "--temperature", "1.0", "--device", "cpu", "--bootstrap", "100", *BOX, "--out", str(out)]
    summary = main(argv)
    printed = capsys.readouterr().out
    assert "sandbox: python -I" in printed  # the protections, printed before anything is sampled, as in training
    assert printed.index("sandbox: python -I") < printed.index("test: sampling")
    assert "in force:" in printed and "## Tool use" in printed

    run = json.loads((out / "run.json").read_text())
    assert run["tool"] == "python" and run["max_turns"] == 8 and run["max_tool_chars"] == 256  # the trainer's defaults
    assert run["max_new_tokens"] == 40  # the tool job's budget: room for a call, its output and the answer

    rows = _rows(out)
    assert len(rows) == 48
    for r in rows:  # the engine's count of calls that ran agrees with the text the task reads
        assert (r["tool_calls"] > 0) == at.called_tool(r["completion"])
        assert r["reward"] == at.reward(r["completion"], r["gold"])
    tool = summary["benchmarks"]["test"]["tool"]
    assert 0 < tool["call_rate"] < 1, tool  # the cold-started policy calls the tool on part of the prompts
    assert tool == tool_use(rows)
    trainer = at.tool_breakdown([r["completion"] for r in rows], [r["reward"] for r in rows])  # eval_tool/* keys
    assert tool["call_rate"] == pytest.approx(trainer["call_rate"])
    assert tool["acc_with_tool"] == pytest.approx(trainer["acc_with_tool"])
    assert tool["acc_without_tool"] == pytest.approx(trainer["acc_without_tool"])
    assert "| test | 48 |" in (out / "summary.md").read_text()
    assert json.loads((out / "summary.json").read_text())["benchmarks"]["test"]["tool"] == tool

    # resumable as without the tool; other tool settings on the same folder are refused
    capsys.readouterr()
    main(argv)
    assert "skipped" in capsys.readouterr().out and _rows(out) == rows
    with pytest.raises(ValueError, match="other settings.*max_tool_chars"):
        main([*argv[:-2], "--max-tool-chars", "64", "--out", str(out)])


@pytest.mark.parametrize("extra, message", [
    (["--task", "arith_tool", "--model", str(TOOL_MODEL), "--tool", "none"],
     "--tool none: the arith_tool task is evaluated with the Python tool"),
    (["--task", "arith_tool"], "--model is the addition model.*tiny-qwen3-tool"),
    (["--task", "math", "--style", "tool"], "--style tool needs the tool: add --tool python"),
    (["--task", "math", "--tool", "python", "--style", "official"], "--style official with --tool python"),
    (["--task", "arith", "--tool", "bash"], "--tool must be one of"),
    (["--task", "arith_tool", "--model", str(TOOL_MODEL), "--max-tool-chars", "1"], "--max-tool-chars must be >= 2"),
    (["--task", "arith_tool", "--model", str(TOOL_MODEL), "--max-turns", "0"], "--max-turns must be >= 1"),
    (["--task", "arith_tool", "--model", str(TOOL_MODEL), "--tool-timeout-s", "0"], "--tool-timeout-s must be"),
    (["--task", "arith_tool", "--model", str(TOOL_MODEL), "--tool-waive", "seccomp"], "--tool-waive must be"),
])
def test_a_tool_task_without_the_tool_and_bad_tool_flags_are_refused_naming_the_flag(tmp_path, capsys, extra, message):
    import re

    out = tmp_path / "eval"
    with pytest.raises(SystemExit) as exit_:
        main([*extra, "--device", "cpu", "--out", str(out)])
    assert exit_.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not out.exists()  # refused before anything loads or is written


def test_a_protection_the_machine_cannot_give_names_the_evaluators_waive_flag(tmp_path, monkeypatch):
    from spo_lab.errors import UserError
    from spo_lab.tools import sandbox

    def unavailable(*args, **kwargs):
        raise sandbox.SandboxUnavailable("pid_namespace is not available here", missing=["pid_namespace"])

    monkeypatch.setattr(sandbox, "PythonSandbox", unavailable)
    monkeypatch.setattr("spo_lab.tools.PythonSandbox", unavailable)
    with pytest.raises(UserError, match="With spo_lab.evaluate, waive them with --tool-waive pid_namespace"):
        main(["--task", "arith_tool", "--model", str(TOOL_MODEL), "--split", "test", "--limit", "1", "--n", "1",
              "--device", "cpu", "--out", str(tmp_path / "eval")])


def test_the_tool_flags_are_the_trainers():
    from spo_lab.train import Config

    text = build_parser().format_help()
    for flag in ("--tool ", "--max-turns", "--max-tool-chars", "--tool-timeout-s", "--tool-memory-mb", "--tool-waive",
                 "--tool-workers"):
        assert flag in text
    args = build_parser().parse_args(["--out", "x"])
    cfg = Config()
    assert (args.tool, args.max_turns, args.max_tool_chars, args.tool_timeout_s, args.tool_memory_mb, args.tool_waive,
            args.tool_workers) == (cfg.tool, cfg.max_turns, cfg.max_tool_chars, cfg.tool_timeout_s, cfg.tool_memory_mb,
                                   cfg.tool_waive, cfg.tool_workers)


def test_math_with_the_tool_on_the_fixtures_uses_the_tool_prompt_and_engine(tmp_path, monkeypatch, capsys):
    """``--task math --tool python`` on the bundled benchmark fixtures: the math task's tool style (prompt and
    reward rules), the ToolEngine around the engine, the tool section of the summary. The tiny tool model is
    widened to the long prompts (rotary positions have no weights); it writes no code on them, so the tool calls
    themselves are checked on arith_tool above."""
    pytest.importorskip("datasets")
    from spo_lab.tools import ToolEngine

    model = tmp_path / "tiny-tool-long"
    shutil.copytree(TOOL_MODEL, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 1024}))
    prompts = []
    generate = ToolEngine.generate

    def recording(self, batch, *args, **kwargs):
        prompts.extend(batch)
        return generate(self, batch, *args, **kwargs)

    monkeypatch.setattr(ToolEngine, "generate", recording)
    out = tmp_path / "eval"
    summary = main(["--task", "math", "--tool", "python", "--model", str(model), "--benchmark-dir", str(FIX),
                    "--benchmarks", "aime24,hmmt25", "--limit", "2", "--n", "2", "--max-new-tokens", "24",
                    "--max-turns", "3", "--device", "cpu", "--dtype", "float32", "--bootstrap", "50",
                    "--cache-dir", str(tmp_path / "hf-cache"), *BOX, "--out", str(out)])
    assert "sandbox: python -I" in capsys.readouterr().out
    assert len(prompts) == 4 and all("<code>" in p and "<interpreter>" in p for p in prompts)  # the tool instruction
    run = json.loads((out / "run.json").read_text())
    assert run["style"] == "tool" and run["tool"] == "python" and run["max_turns"] == 3
    assert list(summary["benchmarks"]) == ["aime24", "hmmt25"]
    for b in summary["benchmarks"].values():
        assert b["tool"]["responses"] == 4 and 0 <= b["tool"]["call_rate"] <= 1
    assert all("tool_calls" in r for r in _rows(out))
    assert "## Tool use" in (out / "summary.md").read_text()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
