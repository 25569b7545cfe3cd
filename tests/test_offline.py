"""The offline pass at scale (sharded, resumable, equal to offline_counts) and the official offline-values file."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from spo_lab.engines import HFEngine
from spo_lab.models import DEFAULT_MODEL_DIR, load_policy
from spo_lab.offline import (export_official_values, import_official_values, offline_counts, offline_pass,
                             official_prompt_key)
from spo_lab.tasks.arith import ArithTask
from spo_lab.tasks.base import Problem
from spo_lab.tracker import ValueTracker

KW = dict(n0=4, temperature=1.0, max_new_tokens=6, seed=5, model_key="bundled", batch=16)  # chunks of 4 prompts


@pytest.fixture(scope="module")
def setup():
    """The bundled warm-started tiny Qwen3 on 16 addition prompts: rewards are a real mix of 0 and 1."""
    model, tok = load_policy(DEFAULT_MODEL_DIR)
    task = ArithTask()
    return HFEngine(model, tok), task, task.load("train")[:16]


@pytest.fixture(scope="module")
def reference(setup):
    engine, task, problems = setup
    return offline_counts(engine, task, problems, **KW)


class Counting:
    """An engine wrapper that counts generate calls and can be made to die after ``die_after`` calls."""

    def __init__(self, engine, die_after=None):
        self.engine, self.calls, self.die_after = engine, 0, die_after

    def generate(self, *a, **kw):
        if self.die_after is not None and self.calls >= self.die_after:
            raise KeyboardInterrupt("killed")
        self.calls += 1
        return self.engine.generate(*a, **kw)

    def sync_weights(self, model):
        self.engine.sync_weights(model)


def test_reference_is_not_trivial(reference):
    succ, trials = reference
    assert (trials == 4).all() and 0 < succ.sum() < 4 * 16  # some prompts solved, some not


@pytest.mark.parametrize("shard_size", [4, 3, 1000])  # 3 rounds up to the 4-prompt chunk
def test_pass_equals_offline_counts(setup, reference, tmp_path, shard_size):
    engine, task, problems = setup
    succ, trials, scores = offline_pass(engine, task, problems, out_dir=tmp_path, shard_size=shard_size,
                                        return_scores=True, **KW)
    assert torch.equal(succ, reference[0]) and torch.equal(trials, reference[1])  # bit for bit
    assert scores.shape == (16, 4) and torch.equal(scores.sum(1), succ)
    (root,) = tmp_path.glob("offline-*")
    assert len(list(root.glob("shard-*.pt"))) == (1 if shard_size == 1000 else 4)
    assert json.loads((root / "manifest.json").read_text())["shard_size"] == (1000 if shard_size == 1000 else 4)
    assert not list(root.glob("*.tmp"))


def test_resume_after_a_deleted_shard_and_a_killed_run(setup, reference, tmp_path):
    engine, task, problems = setup
    eng = Counting(engine)
    offline_pass(eng, task, problems, out_dir=tmp_path, shard_size=4, **KW)
    assert eng.calls == 4  # 16 prompts / 4 per chunk, one chunk per shard
    (root,) = tmp_path.glob("offline-*")

    # everything on disk: nothing is sampled again
    eng = Counting(engine)
    assert torch.equal(offline_pass(eng, task, problems, out_dir=tmp_path, shard_size=4, **KW)[0], reference[0])
    assert eng.calls == 0

    # a middle shard lost: only it is sampled again, from the RNG state its predecessor stored
    (root / "shard-00001.pt").unlink()
    eng = Counting(engine)
    assert torch.equal(offline_pass(eng, task, problems, out_dir=tmp_path, shard_size=4, **KW)[0], reference[0])
    assert eng.calls == 1

    # a torn file is recomputed, not trusted
    (root / "shard-00002.pt").write_bytes(b"not a torch file")
    eng = Counting(engine)
    assert torch.equal(offline_pass(eng, task, problems, out_dir=tmp_path, shard_size=4, **KW)[0], reference[0])
    assert eng.calls == 1

    # a pass killed during its third shard, then resumed
    fresh = tmp_path / "fresh"
    with pytest.raises(KeyboardInterrupt):
        offline_pass(Counting(engine, die_after=2), task, problems, out_dir=fresh, shard_size=4, **KW)
    (froot,) = fresh.glob("offline-*")
    assert sorted(p.name for p in froot.glob("shard-*.pt")) == ["shard-00000.pt", "shard-00001.pt"]
    eng = Counting(engine)
    assert torch.equal(offline_pass(eng, task, problems, out_dir=fresh, shard_size=4, **KW)[0], reference[0])
    assert eng.calls == 2


def test_shards_are_keyed_by_their_inputs(setup, tmp_path):
    engine, task, problems = setup
    offline_pass(engine, task, problems[:4], out_dir=tmp_path, shard_size=4, **KW)
    eng = Counting(engine)
    offline_pass(eng, task, problems[:4], out_dir=tmp_path, shard_size=4, **{**KW, "seed": 6})
    assert eng.calls == 1 and len(list(tmp_path.glob("offline-*"))) == 2  # another seed: another pass
    eng = Counting(engine)
    offline_pass(eng, task, problems[:4], out_dir=tmp_path, shard_size=4, top_k=3, **KW)
    assert eng.calls == 1  # truncated sampling is another pass too


# ----------------------------------------------------------------------------- the official format
def _chat(text):
    return f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


PROBS = [Problem("a", _chat("What is 1+1?\nThe answer format must be: \\boxed{'The final answer goes here.'}"), "2"),
         Problem("b", "  12+30=", "42"),
         Problem("c", _chat("Find x.  "), "3", {"user_content": " Find x. "})]


def test_official_prompt_key():
    fmt = "\nThe answer format must be: \\boxed{'The final answer goes here.'}"
    assert official_prompt_key(PROBS[0]) == "What is 1+1?" + fmt
    assert official_prompt_key(PROBS[1]) == "12+30="  # no chat template: the prompt itself, stripped
    assert official_prompt_key(PROBS[2]) == "Find x."
    # the official merge script's cut of a decoded (special tokens dropped) prompt gives the same key
    decoded = _chat("What is 1+1?").replace("<|im_start|>", "").replace("<|im_end|>", "")
    merged_key = decoded.split("user\n")[-1].split("\nassistant")[0].strip()
    assert merged_key == official_prompt_key(Problem("d", _chat("What is 1+1?"), ""))


def test_round_trip_counts_and_scores(tmp_path):
    succ, trials = torch.tensor([3.0, 0.0, 8.0]), torch.tensor([8.0, 8.0, 8.0])
    path = tmp_path / "values.json"
    assert export_official_values(path, PROBS, succ, trials) == {"written": 3, "omitted": 0}
    data = json.loads(path.read_text())
    assert data["12+30="] == [0] * 8 and sorted(data["Find x."]) == [1] * 8
    s2, t2 = import_official_values(path, PROBS)
    assert torch.equal(s2, succ) and torch.equal(t2, trials)
    # per-sample scores (e.g. offline_pass(..., return_scores=True)) are written as they are
    scores = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]])
    export_official_values(path, PROBS, scores=scores)
    assert json.loads(path.read_text())["Find x."] == [1, 1, 1, 0]
    s3, t3 = import_official_values(path, PROBS)
    assert s3.tolist() == [2.0, 0.0, 3.0] and t3.tolist() == [4.0] * 3


def test_import_follows_the_official_reader(tmp_path):
    path = tmp_path / "values.json"
    keys = [official_prompt_key(p) for p in PROBS]
    path.write_text(json.dumps({keys[0]: [1, -1, 1, -1], keys[1]: [0.0, 1.0, 0.3], keys[2]: list(range(-5, 7))}))
    succ, trials, stats = import_official_values(path, PROBS, max_scores=8, return_stats=True)
    assert succ[:2].tolist() == [2.0, 2.0] and trials[:2].tolist() == [4.0, 3.0]  # score > 0 is a success
    assert trials[2] == 8 and 0 <= succ[2] <= 6 and stats.subsampled == 1  # 12 scores subsampled to 8
    again = import_official_values(path, PROBS, max_scores=8)
    assert torch.equal(again[0], succ)  # the subsample is seeded
    with pytest.raises(ValueError, match="outside"):
        import_official_values(path, PROBS, binarize=False)


def test_missing_prompts_are_an_error_or_the_prior_never_weight_zero(tmp_path):
    path = tmp_path / "values.json"
    path.write_text(json.dumps({official_prompt_key(PROBS[0]): [1, 1, 0, 0], official_prompt_key(PROBS[2]): [],
                                "a prompt of another data set": [1], "and another": [0]}))
    with pytest.raises(ValueError, match=r"2 of 3 prompts are missing.*12\+30="):
        import_official_values(path, PROBS)
    with pytest.warns(UserWarning) as rec:
        succ, trials, stats = import_official_values(path, PROBS, missing="prior", return_stats=True)
    text = " ".join(str(w.message) for w in rec)
    assert "2 of 3 prompts are missing" in text and "2 entries" in text  # both reported
    assert (stats.matched, stats.missing, stats.extra) == (1, 2, 2)
    assert succ.tolist() == [2.0, 0.0, 0.0] and trials.tolist() == [4.0, 0.0, 0.0]
    tracker = ValueTracker(3)
    tracker.init_from_counts(succ, trials)
    assert tracker.alpha[1:].tolist() == tracker.beta[1:].tolist() == [0.5, 0.5]  # the prior, weight > 0
    assert tracker.alpha[0] == pytest.approx(8 * 2.5 / 5)  # Jeffreys init for the prompt that was found


def test_export_guards(tmp_path):
    with pytest.raises(ValueError, match="integers"):
        export_official_values(tmp_path / "v.json", PROBS, [0.5, 1, 1], [1, 1, 1])
    with pytest.raises(ValueError, match="share the official key"):
        export_official_values(tmp_path / "v.json", [PROBS[1], Problem("z", "12+30=", "42")], [1, 1], [1, 1])
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        out = export_official_values(tmp_path / "v.json", PROBS, [1, 0, 0], [2, 0, 1])
    assert out == {"written": 2, "omitted": 1} and "no offline samples" in str(rec[0].message)
    assert "12+30=" not in json.loads((tmp_path / "v.json").read_text())  # never an empty list
