"""Tool-integrated rollouts: the ReTool loop of ToolEngine, its masks, its statistics, HFEngine's turn
continuation, and the guarantee that no tool-output token ever receives a gradient.

The loop is driven twice: by a scripted inner engine (exact token sequences, so every tool path runs
deterministically) and by a real HFEngine on a tiny Qwen3 that has memorised a tool-calling answer.
Code always runs in the PythonSandbox, never in the test process.
"""

from __future__ import annotations

import string
import threading
import time

import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from spo_lab.engines import HFEngine
from spo_lab.engines.base import Rollouts
from spo_lab.loss import policy_loss
from spo_lab.models import token_logprobs
from spo_lab.tiny_model import SPECIAL_TOKENS, build_tiny_model, tiny_qwen3_config
from spo_lab.tools import PythonSandbox, ToolEngine, Turn
from spo_lab.tools.engine import CUT_MARKER, cut_turn, extract_code, format_tool_output
from spo_lab.tools.sandbox import SANDBOX_ERROR_MESSAGE, SandboxResult

TAGS = ["<code>", "</code>", "<interpreter>", "</interpreter>"]


def tool_tokenizer() -> PreTrainedTokenizerFast:
    """The bundled tokenizer's recipe (one token per character, left padding) over printable ASCII,
    plus the four tags as ordinary (not special) tokens, so decoded texts keep them."""
    chars = [c for c in string.printable if c not in "\r\x0b\x0c"]
    backend = Tokenizer(models.WordLevel({t: i for i, t in enumerate([*SPECIAL_TOKENS, *chars])}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>",
                                  padding_side="left", clean_up_tokenization_spaces=False, model_max_length=4096)
    tok.add_tokens(TAGS)
    return tok


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These models are tiny: one torch thread is faster than two on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok():
    return tool_tokenizer()


@pytest.fixture(scope="module")
def sandbox():
    return PythonSandbox(timeout_s=1.0, memory_mb=256)


def enc(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def interp(output: str) -> str:
    return f"<interpreter>\n{output}\n</interpreter>\n\n"


class ScriptedEngine:
    """An inner engine that writes pre-scripted turns: ``scripts[prompt][k]`` is the text of turn k (the
    number of tool outputs already in the prefix). Budgets and the stop string are honoured as a real
    engine does (through ``cut_turn``); the log-prob of the j-th token of a turn is ``-0.25 - 0.01 j``."""

    def __init__(self, tok, scripts: dict[str, list[str]]):
        self.tokenizer, self.scripts = tok, scripts
        self.calls: list[list[list[int]]] = []  # the prefixes of each call
        self.synced = None

    def sync_weights(self, model) -> None:
        self.synced = model

    def continue_tokens(self, prefixes, *, max_new_tokens, temperature, greedy, top_k, top_p, stop):
        budgets = [max_new_tokens] * len(prefixes) if isinstance(max_new_tokens, int) else list(max_new_tokens)
        self.calls.append([list(p) for p in prefixes])
        turns = []
        for p, b in zip(prefixes, budgets):
            text = self.tokenizer.decode(p)
            prompt = max((k for k in self.scripts if text.startswith(k)), key=len)
            k = text.count("</interpreter>")
            script = self.scripts[prompt]
            ids = enc(self.tokenizer, script[k] if k < len(script) else "<eos>")
            cut, reason = cut_turn(self.tokenizer, ids, stop, budget=b)
            turns.append(Turn(ids[:cut], [-0.25 - 0.01 * j for j in range(cut)], reason))
        return turns


def row_text(tok, ro: Rollouts, r: int) -> str:
    return tok.decode(ro.response_ids[r][ro.response_mask[r].bool()].tolist())


def check_masks(tok, ro: Rollouts, r: int, pieces: list[tuple[str, bool]]) -> None:
    """Row r is exactly the concatenation of ``pieces`` (text, sampled by the policy?), token for token:
    loss_mask 1 exactly on the policy's pieces, response_mask 1 on all, log-prob 0 on tool output."""
    ids, pm = [], []
    for text, by_policy in pieces:
        t = enc(tok, text)
        ids += t
        pm += [int(by_policy)] * len(t)
    n = len(ids)
    assert ro.response_ids[r, :n].tolist() == ids
    assert ro.response_mask[r, :n].tolist() == [1] * n and int(ro.response_mask[r].sum()) == n
    assert ro.loss_mask[r, :n].tolist() == pm and int(ro.loss_mask[r].sum()) == sum(pm)
    tool = ro.response_mask[r].bool() & ~ro.loss_mask[r].bool()
    assert bool((ro.logprobs[r][tool] == 0).all())
    assert bool((ro.logprobs[r][ro.loss_mask[r].bool()] < 0).all())


# ====================================================================== the loop, scripted
SCRIPTS = {
    "print:": ["a<code>print(6*7)</code>", "b<eos>"],
    "raise:": ["<code>1/0</code>", "c<eos>"],
    "loop:": ["<code>while True:\n    pass</code>", "d<eos>"],
    "huge:": ["<code>print('x' * 5000)</code>", "e<eos>"],
    "fence:": ["<code>\n```python\nx = 20\nprint(x + 1)\n```\n</code>", "f<eos>"],
    "three:": ["<code>print(1)</code>", "<code>print(2)</code>", "<code>3 * 1</code>", "g<eos>"],
    "none:": ["7<eos>"],
    "stray:": ["no block</code>", "h<eos>"],
    "special:": ["<code>print('<' + 'eos>x')</code>", "i<eos>"],
}


@pytest.fixture(scope="module")
def scripted(tok, sandbox):
    """One batch over every scripted prompt (n = 1), a budget large enough for all of them."""
    inner = ScriptedEngine(tok, SCRIPTS)
    eng = ToolEngine(inner, sandbox, max_turns=8, max_tool_chars=256)
    ro = eng.generate(list(SCRIPTS), 1, temperature=1.0, max_new_tokens=400)
    return eng, inner, ro, {p: i for i, p in enumerate(SCRIPTS)}


def test_code_that_prints_comes_back_as_interpreter_tokens_with_loss_mask_0(tok, scripted):
    eng, _, ro, row = scripted
    r = row["print:"]
    check_masks(tok, ro, r, [("a<code>print(6*7)</code>", True), (interp("42\n"), False), ("b<eos>", True)])
    assert ro.texts[r] == "a<code>print(6*7)</code>" + interp("42\n") + "b"  # what the reward reads
    assert not ro.truncated[r]
    # the policy's log-probs are the engine's, turn by turn; the tool's are 0
    lp = ro.logprobs[r][ro.loss_mask[r].bool()].tolist()
    first = len(enc(tok, "a<code>print(6*7)</code>"))
    want = [-0.25 - 0.01 * j for j in range(first)] + [-0.25, -0.26]
    assert lp == pytest.approx(want, abs=1e-6)
    s = eng.last_stats
    assert (s["turns"][r], s["calls"][r], s["errors"][r]) == (2, 1, 0)
    assert s["tool_tokens"][r] == len(enc(tok, interp("42\n"))) and s["seconds"][r] > 0


def test_the_next_turn_continues_the_same_tokens(tok, scripted):
    """Turn 2 conditions on prompt + turn 1 + the interpreter tokens, exactly (no re-tokenisation, no role)."""
    _, inner, ro, row = scripted
    r = row["print:"]
    second = [p for p in inner.calls[1] if tok.decode(p).startswith("print:")]
    assert second == [enc(tok, "print:a<code>print(6*7)</code>" + interp("42\n"))]


def test_crash_timeout_and_huge_output_are_bounded_data(tok, scripted):
    eng, _, ro, row = scripted
    s = eng.last_stats
    crash = ro.texts[row["raise:"]]
    assert "ZeroDivisionError" in crash and crash.endswith("</interpreter>\n\nc")
    assert s["errors"][row["raise:"]] == 1 and not ro.truncated[row["raise:"]]
    slow = ro.texts[row["loop:"]]
    assert "Timeout" in slow and slow.endswith("d") and s["errors"][row["loop:"]] == 1
    assert s["seconds"][row["loop:"]] >= 1.0
    out = "x" * 5000 + "\n"
    r = row["huge:"]
    check_masks(tok, ro, r, [("<code>print('x' * 5000)</code>", True),
                             (interp("x" * 128 + CUT_MARKER + "x" * 127 + "\n"), False), ("e<eos>", True)])
    assert format_tool_output(out, 256) == interp(out[:128] + CUT_MARKER + out[-128:])
    assert s["errors"][r] == 0


def test_a_python_fence_inside_the_code_is_stripped(tok, scripted):
    _, _, ro, row = scripted
    assert interp("21\n") in ro.texts[row["fence:"]]
    assert extract_code("x<code>\n```python\nprint(1)\n```\n</code>") == "print(1)"
    assert extract_code("<code>```\nprint(2)```</code>") == "print(2)"
    assert extract_code("see <code> then <code>print(3)</code>") == "print(3)"  # the block that is closed
    assert extract_code("no code</code>") is None and extract_code("<code>open") is None


def test_rows_finish_at_different_turns_and_each_turn_batches_the_running_rows(tok, scripted):
    eng, inner, ro, row = scripted
    s = eng.last_stats
    assert s["turns"][row["none:"]] == 1 and s["calls"][row["none:"]] == 0
    assert s["turns"][row["three:"]] == 4 and s["calls"][row["three:"]] == 3
    assert ro.texts[row["three:"]].endswith(interp("3\n") + "g")  # the last bare expression is printed
    assert [len(c) for c in inner.calls] == [len(SCRIPTS), 7, 1, 1]  # rows drop out as they finish
    assert ro.texts[row["none:"]] == "7" and not ro.truncated[row["none:"]]


def test_a_closing_tag_without_code_ends_the_response(tok, scripted):
    eng, _, ro, row = scripted
    r = row["stray:"]
    assert ro.texts[r] == "no block</code>" and ro.truncated[r] and eng.last_stats["calls"][r] == 0


def test_special_token_text_in_tool_output_stays_text(tok, scripted):
    """A tool printing '<eos>' cannot end the response or inject the eos token."""
    _, _, ro, row = scripted
    r = row["special:"]
    ids = ro.response_ids[r][ro.response_mask[r].bool()].tolist()
    assert ids.count(tok.eos_token_id) == 1 and ids[-1] == tok.eos_token_id
    assert ro.texts[r].endswith(interp("<eos>x\n") + "i")


def test_layout_stats_and_metrics(tok, scripted):
    eng, _, ro, _ = scripted
    R = len(SCRIPTS)
    assert ro.prompt_index.tolist() == list(range(R)) and ro.policy_version.tolist() == [0] * R
    assert ro.response_ids.shape[1] <= 400
    assert set(eng.last_stats) == {"turns", "calls", "errors", "seconds", "tool_tokens", "dropped", "max_turns"}
    assert all(v.shape == (R,) for v in eng.last_stats.values())
    m = eng.tool_metrics()
    assert m["tool/calls_mean"] == pytest.approx(sum(eng.last_stats["calls"].tolist()) / R)
    assert m["tool/call_rate"] == pytest.approx(7 / R)  # every row but none: and stray:
    assert m["tool/errors_mean"] == pytest.approx(2 / R)
    assert set(m) == {"tool/turns_mean", "tool/calls_mean", "tool/errors_mean", "tool/seconds_mean",
                      "tool/tokens_mean", "tool/call_rate", "tool/dropped_frac", "tool/max_turns_frac"}
    assert ro.num_tokens == int(ro.loss_mask.sum()) < int(ro.response_mask.sum())
    eng.sync_weights("weights")
    assert eng.engine.synced == "weights"


def test_n_responses_per_prompt_keep_the_protocol_layout(tok, sandbox):
    eng = ToolEngine(ScriptedEngine(tok, SCRIPTS), sandbox)
    ro = eng.generate(["none:", "print:"], 3, temperature=1.0, max_new_tokens=100)
    assert ro.prompt_index.tolist() == [0, 0, 0, 1, 1, 1]
    assert ro.texts[:3] == ["7"] * 3 and all(t.endswith(interp("42\n") + "b") for t in ro.texts[3:])
    assert ro.tagged(torch.tensor([5, 9]), 3, policy_version=2).prompt_index.tolist() == [5] * 3 + [9] * 3


def test_max_turns_ends_the_response_without_running_the_last_code(tok, sandbox):
    eng = ToolEngine(ScriptedEngine(tok, SCRIPTS), sandbox, max_turns=2)
    ro = eng.generate(["three:"], 1, temperature=1.0, max_new_tokens=200)
    assert ro.texts[0] == "<code>print(1)</code>" + interp("1\n") + "<code>print(2)</code>"
    assert ro.truncated[0] and eng.last_stats["calls"][0] == 1 and eng.last_stats["max_turns"][0]
    assert eng.tool_metrics()["tool/max_turns_frac"] == 1.0


def test_a_tool_output_that_would_reach_the_budget_is_dropped(tok, sandbox):
    turn = "a<code>print(6*7)</code>"
    t, out = len(enc(tok, turn)), len(enc(tok, interp("42\n")))
    for budget in (t + 1, t + out):  # the output would fill the budget (the recipe's >=): dropped
        eng = ToolEngine(ScriptedEngine(tok, SCRIPTS), sandbox)
        ro = eng.generate(["print:"], 1, temperature=1.0, max_new_tokens=budget)
        check_masks(tok, ro, 0, [(turn, True)])
        assert ro.truncated[0] and eng.last_stats["dropped"][0] and eng.last_stats["calls"][0] == 1
        assert eng.last_stats["tool_tokens"][0] == 0
    # one token more: the output fits, and the last turn gets the one token left
    eng = ToolEngine(ScriptedEngine(tok, SCRIPTS), sandbox)
    ro = eng.generate(["print:"], 1, temperature=1.0, max_new_tokens=t + out + 1)
    check_masks(tok, ro, 0, [(turn, True), (interp("42\n"), False), ("b", True)])
    assert ro.truncated[0] and not eng.last_stats["dropped"][0] and ro.response_ids.shape[1] == t + out + 1
    # the budget ends inside a turn
    ro = eng.generate(["print:"], 1, temperature=1.0, max_new_tokens=3)
    check_masks(tok, ro, 0, [("a<code>p", True)])
    assert ro.truncated[0] and eng.last_stats["calls"][0] == 0


class BrokenSandbox:
    """A tool layer that fails in every way it can: raises, reports its own error, hangs a while."""

    def __init__(self):
        self.lock, self.active, self.peak = threading.Lock(), 0, 0

    def run(self, code):
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            if "raise" in code:
                raise RuntimeError("the tool layer broke")
            time.sleep(0.3)
            if "error" in code:
                return SandboxResult(SANDBOX_ERROR_MESSAGE, None, False, 0.3, sandbox_error="could not start")
            return SandboxResult("ok\n", 0, False, 0.3)
        finally:
            with self.lock:
                self.active -= 1


def test_tool_layer_failures_become_a_fixed_message_and_calls_run_concurrently(tok):
    scripts = {"r:": ["<code>raise</code>", "1<eos>"], "e:": ["<code>error</code>", "2<eos>"],
               "o1:": ["<code>fine</code>", "3<eos>"], "o2:": ["<code>fine</code>", "4<eos>"]}
    box = BrokenSandbox()
    eng = ToolEngine(ScriptedEngine(tok, scripts), box, tool_workers=4)
    t0 = time.perf_counter()
    ro = eng.generate(list(scripts), 1, temperature=1.0, max_new_tokens=200)
    assert time.perf_counter() - t0 < 0.8  # three 0.3 s calls side by side, not one after another
    assert box.peak >= 3
    assert ro.texts[0] == "<code>raise</code>" + interp(SANDBOX_ERROR_MESSAGE) + "1"
    assert ro.texts[1] == "<code>error</code>" + interp(SANDBOX_ERROR_MESSAGE) + "2"
    assert ro.texts[2].endswith(interp("ok\n") + "3")
    assert eng.last_stats["errors"].tolist() == [1, 1, 0, 0]


def test_construction_checks(tok, sandbox):
    class NoContinue:
        tokenizer = tok

        def generate(self, *a, **k): ...

        def sync_weights(self, m): ...

    with pytest.raises(TypeError, match="continue_tokens"):
        ToolEngine(NoContinue(), sandbox)
    with pytest.raises(ValueError):
        ToolEngine(ScriptedEngine(tok, SCRIPTS), sandbox, max_turns=0)
    eng = ToolEngine(ScriptedEngine(tok, SCRIPTS), sandbox)
    assert eng.tool_metrics() == {} and eng.tokenizer is tok
    assert eng.scripts is eng.engine.scripts  # anything else is the inner engine's (sleep, close, ...)


def test_cut_turn_is_exact_at_a_token_boundary(tok):
    ids = enc(tok, "ab</code>cd</code><eos>")
    assert cut_turn(tok, ids, "</code>", budget=100) == (3, "stop")
    assert cut_turn(tok, ids, "cd<", budget=100) == (6, "stop")  # ends inside the </code> token: kept whole
    assert cut_turn(tok, ids, "zz", budget=100) == (len(ids), "eos")
    assert cut_turn(tok, ids, "</code>", budget=2) == (2, "length")
    eos_first = enc(tok, "ab<eos></code>")
    assert cut_turn(tok, eos_first, "</code>", budget=100) == (3, "eos")
    assert cut_turn(tok, enc(tok, "de"), None, budget=5) == (2, "length")  # a backend that stopped early


# ====================================================================== a real HFEngine
SEQS = {"Q:": "ab<code>print(6*7)</code>" + interp("42\n") + "=42<eos>", "Rzz:": "yz<eos>"}


@pytest.fixture(scope="module")
def policy(tok):
    """A tiny Qwen3 (2 layers, hidden 64) that has memorised SEQS: for 'Q:' it writes a tool call."""
    cfg = tiny_qwen3_config(tok, hidden_size=64, num_hidden_layers=2, intermediate_size=128,
                            max_position_embeddings=256)
    model = build_tiny_model(cfg, seed=0)
    batch = tok([p + s for p, s in SEQS.items()], return_tensors="pt", padding=True, add_special_tokens=False)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    labels = ids.masked_fill(mask == 0, -100)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    for _ in range(150):
        loss = model(input_ids=ids, attention_mask=mask, position_ids=pos, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.05
    model.eval()
    return model


def _rescored(model, ro: Rollouts, temperature: float):
    with torch.no_grad():
        return token_logprobs(model, ro.prompt_ids, ro.prompt_mask, ro.response_ids, ro.response_mask,
                              temperature=temperature)


def test_hf_continue_tokens_stops_exactly_and_scores_like_token_logprobs(tok, policy):
    eng = HFEngine(policy, tok)
    prefixes = [enc(tok, "Q:"), enc(tok, "Rzz:")]
    turns = eng.continue_tokens(prefixes, max_new_tokens=[40, 40], greedy=True, stop="</code>")
    assert tok.decode(turns[0].token_ids) == "ab<code>print(6*7)</code>" and turns[0].stop_reason == "stop"
    assert tok.decode(turns[1].token_ids) == "yz<eos>" and turns[1].stop_reason == "eos"
    # a stop string that ends inside a token keeps that token; a per-row budget
    turns = eng.continue_tokens(prefixes, max_new_tokens=[40, 1], greedy=True, stop="b<c")
    assert tok.decode(turns[0].token_ids) == "ab<code>" and turns[0].stop_reason == "stop"
    assert tok.decode(turns[1].token_ids) == "y" and turns[1].stop_reason == "length"
    # the log-probs are those token_logprobs gives on prefix + turn (sampling, temperature 0.7)
    torch.manual_seed(1)
    turns = eng.continue_tokens(prefixes * 2, max_new_tokens=12, temperature=0.7, stop="</code>")
    for p, t in zip(prefixes * 2, turns):
        want = _rescored(policy, Rollouts(
            prompt_ids=torch.tensor([p]), prompt_mask=torch.ones(1, len(p), dtype=torch.long),
            response_ids=torch.tensor([t.token_ids]), response_mask=torch.ones(1, len(t.token_ids), dtype=torch.long),
            logprobs=torch.zeros(1, len(t.token_ids)), texts=[""], truncated=torch.zeros(1, dtype=torch.bool),
            prompt_index=torch.zeros(1, dtype=torch.long)), 0.7)[0]
        assert torch.allclose(torch.tensor(t.logprobs), want, atol=1e-4)


def test_hf_continue_tokens_with_the_bundled_tokenizer(toy):
    """The bundled tokenizer spells only digits and + - = (transformers' own stop_strings cannot build its
    table from it): the stop still ends each row exactly at its first occurrence."""
    from spo_lab.models import load_policy

    model, btok = load_policy(toy / "model")
    prefixes = [enc(btok, p) for p in ["1+2=", "34+56=", "7+8=", "12+30="]] * 2
    torch.manual_seed(0)
    turns = HFEngine(model, btok).continue_tokens(prefixes, max_new_tokens=6, temperature=1.0, stop="3")
    assert any(t.stop_reason == "stop" for t in turns)
    for p, t in zip(prefixes, turns):
        text = btok.decode(t.token_ids, skip_special_tokens=False)
        assert (t.stop_reason == "stop") == text.endswith("3") and "3" not in text[:-1]
        if t.stop_reason == "length":
            assert len(t.token_ids) == 6
        ids = torch.tensor([p + t.token_ids])
        with torch.no_grad():
            want = token_logprobs(model, ids[:, : len(p)], torch.ones(1, len(p), dtype=torch.long),
                                  ids[:, len(p):], torch.ones(1, len(t.token_ids), dtype=torch.long))[0]
        assert torch.allclose(torch.tensor(t.logprobs), want, atol=1e-4)


def test_tool_engine_on_hf_greedy_writes_the_memorised_tool_call(tok, policy, sandbox):
    eng = ToolEngine(HFEngine(policy, tok), sandbox)
    ro = eng.generate(["Q:", "Rzz:"], 1, greedy=True, max_new_tokens=80)
    assert ro.texts == ["ab<code>print(6*7)</code>" + interp("42\n") + "=42", "yz"]
    check_masks(tok, ro, 0, [("ab<code>print(6*7)</code>", True), (interp("42\n"), False), ("=42<eos>", True)])
    assert not ro.truncated.any() and eng.last_stats["calls"].tolist() == [1, 0]


@pytest.fixture(scope="module")
def sampled(tok, policy, sandbox):
    """ToolEngine rollouts sampled from the real policy at temperature 0.8 (4 per prompt)."""
    eng = ToolEngine(HFEngine(policy, tok), sandbox)
    torch.manual_seed(0)
    ro = eng.generate(["Q:", "Rzz:"], 4, temperature=0.8, max_new_tokens=60)
    return ro


def test_sampled_logprobs_match_token_logprobs_on_the_whole_sequence(tok, policy, sampled):
    """The policy tokens' log-probs are the sampling distribution's, conditioned on the tool output."""
    ro = sampled
    tool = ro.response_mask.bool() & ~ro.loss_mask.bool()
    assert tool.any(dim=1).sum() >= 2  # some rows called the tool, with policy tokens after the output
    assert bool((ro.loss_mask.bool() & (tool.long().cumsum(1) > 0)).any())
    now = _rescored(policy, ro, 0.8)
    pol = ro.loss_mask.bool()
    assert torch.allclose(now[pol], ro.logprobs[pol], atol=1e-4)
    assert bool((ro.logprobs[tool] == 0).all())


def test_no_tool_output_token_ever_receives_gradient(tok, policy, sampled):
    """Tool tokens are attended to (they shape later policy tokens' log-probs) but no loss term is
    computed on them: d loss / d logp is exactly 0 there, the parameter gradient is that of a loss over
    the policy's tokens alone, and what sits at tool positions (old log-probs, advantages) changes nothing."""
    ro = sampled
    pol = ro.loss_mask.bool()
    tool = ro.response_mask.bool() & ~pol
    assert tool.any()
    adv = torch.randn(len(ro), generator=torch.Generator().manual_seed(3))
    old = ro.logprobs - 0.1 * pol  # ratios away from 1, so clipping and the KL term are active somewhere
    kw = dict(clip_low=0.2, clip_high=0.28, dual_clip=10.0, agg="token-mean", kl_coef=0.1)
    params = [p for p in policy.parameters() if p.requires_grad]

    def grads(old_logp, advantages, ref):
        policy.zero_grad(set_to_none=True)
        logp = token_logprobs(policy, ro.prompt_ids, ro.prompt_mask, ro.response_ids, ro.response_mask)
        logp.retain_grad()
        loss, _ = policy_loss(logp, old_logp, advantages, ro.loss_mask, ref_logp=ref, **kw)
        loss.backward()
        return logp.grad.clone(), [p.grad.clone() for p in params]

    ref = ro.logprobs.clone()
    g_logp, g = grads(old, adv, ref)
    assert bool((g_logp[tool] == 0).all()) and bool((g_logp[~ro.response_mask.bool()] == 0).all())
    assert g_logp[pol].abs().sum() > 0

    # junk at the tool positions: old log-probs, per-token advantages, reference log-probs
    junk_old = torch.where(tool, torch.full_like(old, -7.0), old)
    adv_tok = adv[:, None].expand_as(old).clone()
    junk_adv = torch.where(tool, torch.full_like(adv_tok, 100.0), adv_tok)
    junk_ref = torch.where(tool, torch.full_like(ref, 5.0), ref)
    _, g_junk = grads(junk_old, junk_adv, junk_ref)
    for a, b in zip(g, g_junk):
        assert torch.equal(a, b)

    # the same gradient from a loss that only ever sees the policy's tokens (gathered, tool tokens absent)
    policy.zero_grad(set_to_none=True)
    logp = token_logprobs(policy, ro.prompt_ids, ro.prompt_mask, ro.response_ids, ro.response_mask)
    lp, o, a, rf = logp[pol], old[pol], adv_tok[pol], ref[pol]
    ratio = torch.exp(lp - o)
    surr = torch.maximum(-a * ratio, -a * ratio.clamp(1 - 0.2, 1 + 0.28))
    surr = torch.where(a < 0, torch.minimum(surr, -a * 10.0), surr)
    d = (rf - lp).clamp(-20, 20)
    loss = surr.mean() + 0.1 * (torch.exp(d) - d - 1).mean()
    loss.backward()
    for x, p in zip(g, params):
        assert torch.allclose(x, p.grad, atol=1e-6, rtol=1e-4)
    policy.zero_grad(set_to_none=True)


# ====================================================================== VLLMEngine.continue_tokens
def _fake_vllm(monkeypatch, tok, scripts: dict[str, str]):
    """Just enough of vLLM's API for VLLMEngine.continue_tokens: every request answers with its prompt's
    scripted text, past any stop string (as a backend that checks stops late would), log-prob -0.5."""
    import types
    from dataclasses import dataclass, field

    @dataclass
    class SamplingParams:
        temperature: float = 1.0
        max_tokens: int = 16
        top_k: int = 0
        top_p: float = 1.0
        seed: int | None = None
        logprobs: int | None = None
        detokenize: bool = True
        skip_special_tokens: bool = True
        stop_token_ids: list = field(default_factory=list)
        stop: list = field(default_factory=list)
        include_stop_str_in_output: bool = False

    class LLM:
        def __init__(self):
            self.seen = []

        def generate(self, requests, params, use_tqdm, lora_request):
            self.seen.append((requests, params))
            outs = []
            for req, p in zip(requests, params):
                ids = enc(tok, scripts[tok.decode(req["prompt_token_ids"])])[: p.max_tokens]
                lps = [{t: types.SimpleNamespace(logprob=-0.5)} for t in ids]
                outs.append(types.SimpleNamespace(outputs=[types.SimpleNamespace(token_ids=ids, logprobs=lps)]))
            return outs

    from fake_vllm import vllm_engine_module

    module = vllm_engine_module(monkeypatch, LLM=LLM, SamplingParams=SamplingParams,
                                TokensPrompt=lambda prompt_token_ids: {"prompt_token_ids": prompt_token_ids})
    eng = object.__new__(module.VLLMEngine)
    eng.tokenizer, eng.seed, eng.llm, eng.lora_request, eng._warned_truncated = tok, 0, LLM(), None, False
    return eng


def test_vllm_continue_tokens_builds_requests_and_cuts_like_hf(tok, monkeypatch):
    """The request side of VLLMEngine.continue_tokens on a stand-in for vLLM (the real one: below)."""
    import spo_lab.engines as engines_pkg

    scripts = {"Q:": "ab<code>x</code>zz</code>", "Rzz:": "yz<eos>q", "S:": "abcdef"}
    try:
        eng = _fake_vllm(monkeypatch, tok, scripts)
        turns = eng.continue_tokens([enc(tok, p) for p in scripts], max_new_tokens=[40, 40, 3], temperature=0.7,
                                    stop="</code>")
    finally:
        if "vllm" in vars(engines_pkg):
            delattr(engines_pkg, "vllm")
    assert [(tok.decode(t.token_ids), t.stop_reason) for t in turns] == [
        ("ab<code>x</code>", "stop"), ("yz<eos>", "eos"), ("abc", "length")]
    assert turns[0].logprobs == [-0.5] * 5
    requests, params = eng.llm.seen[0]
    assert [r["prompt_token_ids"] for r in requests] == [enc(tok, p) for p in scripts]
    assert [p.max_tokens for p in params] == [40, 40, 3] and all(p.temperature == 0.7 for p in params)
    assert all(p.stop == ["</code>"] and p.include_stop_str_in_output and p.detokenize for p in params)
    assert len({p.seed for p in params}) == 3 and all(p.stop_token_ids == [tok.eos_token_id] for p in params)


def test_vllm_continue_tokens_for_real_matches_hf():
    """Runs where vLLM is installed (``.venv-vllm``): greedy turns equal HFEngine's, stops included, and the
    log-probs are token_logprobs'."""
    pytest.importorskip("vllm", reason="vLLM not installed (bash scripts/setup_vllm_cpu.sh)")
    import json

    from spo_lab.engines.vllm import VLLMEngine
    from spo_lab.models import DEFAULT_MODEL_DIR, load_policy

    model, btok = load_policy(DEFAULT_MODEL_DIR)
    prompts = [json.loads(line)["prompt"]
               for line in (DEFAULT_MODEL_DIR.parent.parent / "data" / "arith" / "test.jsonl").open()][:16]
    prefixes = [enc(btok, p) for p in prompts]
    hf = HFEngine(model, btok).continue_tokens(prefixes, max_new_tokens=8, greedy=True, stop="1")
    with VLLMEngine(DEFAULT_MODEL_DIR, seed=0, in_process=True) as eng:
        vl = eng.continue_tokens(prefixes, max_new_tokens=8, greedy=True, stop="1")
        torch.manual_seed(0)
        sampled = eng.continue_tokens(prefixes, max_new_tokens=[8] * 16, temperature=0.8, stop="1")
    assert [(t.token_ids, t.stop_reason) for t in vl] == [(t.token_ids, t.stop_reason) for t in hf]
    assert any(t.stop_reason == "stop" for t in vl)
    for p, t in zip(prefixes, sampled):
        if t.stop_reason == "stop":
            assert btok.decode(t.token_ids).endswith("1") and "1" not in btok.decode(t.token_ids[:-1])
        ids = torch.tensor([p + t.token_ids])
        with torch.no_grad():
            want = token_logprobs(model, ids[:, : len(p)], torch.ones(1, len(p), dtype=torch.long),
                                  ids[:, len(p):], torch.ones(1, len(t.token_ids), dtype=torch.long),
                                  temperature=0.8)[0]
        assert torch.allclose(torch.tensor(t.logprobs), want, atol=1e-4)
