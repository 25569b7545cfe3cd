"""Sampled evaluation: shapes, determinism, curves consistent with the metric definitions, and the benchmark
command line (end to end on the fixtures; its tables agree with a brute force over the saved samples)."""

from __future__ import annotations

import itertools
import json
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from spo_lab.tasks import arith as task
from spo_lab.evaluate import PAPER_MAJ32, main, pass_and_maj_curves, sample_answers, summarize
from spo_lab.metrics import maj_at_k, pass_at_k
from spo_lab.engines import HFEngine
from spo_lab.models import DEFAULT_MODEL_DIR, load_policy


def test_sample_answers_and_curves(toy):
    model, tok = load_policy(toy / "model")
    problems = task.load_problems("test", toy / "data")[:6]
    answers, correct = sample_answers(HFEngine(model, tok), task.ArithTask(), problems, n=8, temperature=1.5, seed=3)
    assert answers.shape == correct.shape == (6, 8) and correct.dtype == bool
    again, _ = sample_answers(HFEngine(model, tok), task.ArithTask(), problems, n=8, temperature=1.5, seed=3)
    assert (answers == again).all()  # seeded
    for i, p in enumerate(problems):  # correctness is the exact answer check
        assert all(correct[i, j] == (answers[i, j] == int(p.answer)) for j in range(8))
    curves = pass_and_maj_curves(answers, correct, ks=(1, 2, 4, 8, 16))
    assert curves.k.tolist() == [1, 2, 4, 8]  # k > n is left out
    assert np.isclose(curves["pass@k"].iloc[0], correct.mean())  # pass@1 = avg@n
    assert (np.diff(curves["pass@k"]) >= -1e-12).all()


def test_curves_on_hand_made_samples():
    answers = np.array([[5, 5, 3, 3], [1, 2, 2, 9]], dtype=object)
    correct = np.array([[True, True, False, False], [False, True, True, False]])
    curves = pass_and_maj_curves(answers, correct, ks=(1, 2, 4)).set_index("k")
    assert curves.loc[1, "pass@k"] == 0.5
    assert np.isclose(curves.loc[2, "pass@k"], np.mean([pass_at_k(4, 2, 2)] * 2))
    # k = 4: problem 0 ties 5 vs 3 -> the first seen (5, correct); problem 1: 2 wins (correct)
    assert curves.loc[4, "maj@k"] == 1.0
    # k = 2, blocks [5,5] [3,3] -> 1, 0 ; [1,2] tie -> 1 (wrong), [2,9] tie -> 2 (right) -> 0.5
    assert curves.loc[2, "maj@k"] == 0.5


# ============================================================================ the benchmark command line
FIX = Path(__file__).resolve().parent.parent / "data" / "math-fixtures"


def _by_problem(samples_path):
    """benchmark -> [problem][sample] -> row, read back from samples.jsonl."""
    rows = [json.loads(line) for line in Path(samples_path).read_text().splitlines()]
    out: dict = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        out[r["benchmark"]][r["problem"]][r["sample"]] = r
    return {b: [[p[j] for j in sorted(p)] for _, p in sorted(d.items())] for b, d in out.items()}, rows


def _brute_pass(correct_rows, k):
    """mean over problems of the share of ALL k-subsets of the n samples holding a correct one."""
    return float(np.mean([np.mean([any(c[i] for i in s) for s in itertools.combinations(range(len(c)), k)])
                          for c in correct_rows]))


def _check_against_samples(out, n):
    summary = json.loads((out / "summary.json").read_text())
    by, _ = _by_problem(out / "samples.jsonl")
    for b, probs in by.items():
        assert all(len(p) == n for p in probs)
        correct = [[r["correct"] for r in p] for p in probs]
        m = summary["benchmarks"][b]["metrics"]
        assert set(m) == {f"avg@{n}"} | {f"{x}@{k}" for x in ("pass", "maj") for k in (1, 2, 4, 8) if k <= n}
        for k in (1, 2, 4, 8):
            if k <= n:
                assert m[f"pass@{k}"]["value"] == pytest.approx(_brute_pass(correct, k), abs=1e-12)
                answers = np.array([[r["answer"] for r in p] for p in probs], dtype=object)
                assert m[f"maj@{k}"]["value"] == pytest.approx(maj_at_k(answers, np.array(correct), k), abs=1e-12)
            for v in m.values():
                assert 0 <= v["lo"] <= v["value"] <= v["hi"] <= 1
        assert m[f"avg@{n}"]["value"] == pytest.approx(np.mean(correct))
    return summary, by


def _long_context_copy(tmp_path) -> Path:
    """The bundled tiny Qwen3 with room for the maths prompts (~170 characters; it was built with 64 positions,
    and the evaluator refuses prompts longer than the model's context). Rotary positions have no weights, so
    the copy computes exactly what the original computes on prompts that fit."""
    model = tmp_path / "tiny-qwen3-long"
    shutil.copytree(DEFAULT_MODEL_DIR, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 512}))
    return model


def test_cli_end_to_end_on_the_math_fixtures(tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["--model", str(_long_context_copy(tmp_path)), "--task", "math", "--benchmark-dir", str(FIX), "--limit", "3",
            "--n", "4", "--max-new-tokens", "4", "--device", "cpu", "--dtype", "float32", "--engine", "hf",
            "--seed", "1", "--bootstrap", "200", "--cache-dir", str(tmp_path / "hf-cache"), "--out", str(out)]
    main(argv)
    names = ["aime24", "aime25", "beyondaime", "brumo25", "hmmt25"]
    summary, by = _check_against_samples(out, 4)
    assert list(summary["benchmarks"]) == names and list(by) == names
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert {"benchmark", "problem", "problem_id", "sample", "completion", "answer", "reward"} <= set(rows[0])
    assert len(rows) == 4 * sum(d["problems"] for d in summary["benchmarks"].values())
    assert summary["bootstrap"]["resamples"] == 200 and "average" in summary
    assert summary["paper"]["maj@32"]["brumo25"] == {"grpo": PAPER_MAJ32["brumo25"]["grpo"] / 100, "spo": 0.64}
    assert "Qwen3-8B" in summary["paper"]["label"]
    md = (out / "summary.md").read_text()
    assert "paper's Qwen3-8B result: SPO maj@32" in md and "| hmmt25 |" in md and "200 resamples" in md
    import matplotlib.image as mpimg

    img = mpimg.imread(out / "pass_at_k.png")
    assert img.shape[0] >= 3 * 110 and img.shape[1] >= 5 * 110  # drawn at >= 110 dpi

    # resumable: everything is on disk, nothing is sampled again and the samples are untouched
    before = (out / "samples.jsonl").read_bytes()
    capsys.readouterr()
    main(argv)
    assert capsys.readouterr().out.count("skipped") == 5 and (out / "samples.jsonl").read_bytes() == before
    with pytest.raises(ValueError, match="other settings"):
        main([*argv[:-2], "--seed", "2", "--out", str(out)])


def test_cli_on_arith_agrees_with_brute_force_and_resumes_a_partial_run(tmp_path):
    """The bundled tiny Qwen3 solves about half of these: pass@k and maj@k are far from trivial."""
    out = tmp_path / "eval"
    argv = ["--task", "arith", "--split", "test,train", "--limit", "10", "--n", "8", "--temperature", "1.0",
            "--device", "cpu", "--bootstrap", "300", "--out", str(out)]
    main(argv)
    summary, by = _check_against_samples(out, 8)
    p1 = summary["benchmarks"]["test"]["metrics"]["pass@1"]["value"]
    assert 0 < p1 < summary["benchmarks"]["test"]["metrics"]["pass@8"]["value"] <= 1
    assert "Qwen3-8B" not in (out / "summary.md").read_text()  # no paper numbers beside another task
    full = sorted((out / "samples.jsonl").read_text().splitlines())
    # a run killed while writing "train": only part of its rows reached the file
    lines = (out / "samples.jsonl").read_text().splitlines()
    (out / "samples.jsonl").write_text("\n".join(lines[: 80 + 33]) + "\n" + lines[113][:20])
    main(argv)
    assert sorted((out / "samples.jsonl").read_text().splitlines()) == full  # same seed per benchmark: same samples
    assert json.loads((out / "summary.json").read_text())["benchmarks"] == summary["benchmarks"]


def test_summary_on_hand_made_samples(tmp_path):
    path = tmp_path / "samples.jsonl"
    correct = [[1, 0, 0, 1], [0, 0, 0, 0], [1, 1, 1, 0]]
    answers = [["7", "3", "3", "7"], [None, "1", "1", None], ["5", "5", "5", "2"]]
    path.write_text("".join(json.dumps({"benchmark": "b", "problem": i, "problem_id": str(i), "sample": j,
                                        "answer": answers[i][j], "correct": bool(correct[i][j])}) + "\n"
                            for i in range(3) for j in range(4)))
    m = summarize(path, resamples=500, seed=0)["benchmarks"]["b"]["metrics"]
    assert m["pass@2"]["value"] == pytest.approx(_brute_pass(correct, 2)) == pytest.approx((5 / 6 + 0 + 1) / 3)
    assert m["maj@4"]["value"] == pytest.approx(2 / 3)  # tie 7 vs 3 -> 7 (seen first, right); 1 (wrong); 5 (right)
    assert m["avg@4"]["value"] == pytest.approx(5 / 12)
    assert m["pass@2"]["lo"] < m["pass@2"]["value"] < m["pass@2"]["hi"]
    assert m["pass@4"]["lo"] < m["pass@4"]["value"] == 2 / 3 and m["pass@4"]["hi"] == 1  # one of three unsolved
    again = summarize(path, resamples=500, seed=0)["benchmarks"]["b"]["metrics"]
    assert again == m  # the bootstrap is seeded
