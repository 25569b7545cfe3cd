"""SPO in TRL (spo_lab.integrations.trl): SPOTrainer computes what spo_lab.spo.SPO computes, resumes exactly, keeps one
tracker over two processes, and the TRL 1.16 behaviours it wraps still hold.

Runs for real in ``.venv-trl`` (``bash scripts/ci_trl.sh`` builds it with the ``trl`` extra and runs this file). Where
TRL is not installed -- the default environment -- every test that needs it skips, unless ``SPO_REQUIRE_TRL=1`` (set
by ``scripts/ci_trl.sh``) turns the skip into a failure. Every run: the bundled tiny Qwen3 on the CPU, arithmetic
prompts, one torch thread, at most 8 new tokens.

Run as a script (``python -m torch.distributed.run --nproc_per_node 2 tests/test_trl_integration.py --worker OUT``),
this file is the two-process worker of :func:`test_two_processes_keep_one_tracker`.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spo_lab.models import DEFAULT_MODEL_DIR
from spo_lab.spo import SPO

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = 64  # training prompts of every run here


def _require_trl():
    if os.environ.get("SPO_REQUIRE_TRL") == "1":
        import trl  # noqa: F401  (CI: a missing TRL is an error, not a skip)
    else:
        pytest.importorskip("trl", reason='TRL not installed (bash scripts/ci_trl.sh, or pip install -e ".[trl]")')
    return importlib.import_module("spo_lab.integrations.trl")


@pytest.fixture(scope="module")
def spo_trl():
    return _require_trl()


# ====================================================================== without TRL
def test_the_default_environment_does_not_pull_trl():
    """Nothing but spo_lab.integrations.trl imports TRL, and only the `trl` extra (and `bench`, through it) pins it."""
    code = ("import sys, spo_lab, spo_lab.integrations, spo_lab.train, spo_lab.experiment, spo_lab.report; "
            "sys.exit('trl' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "spo_lab").rglob("*.py")
                 if p.name != "trl.py" and ("import trl" in p.read_text() or "from trl" in p.read_text())]
    assert not offenders
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["trl"] == ["trl==1.16.0"] and extras["bench"] == ["spo_lab[trl]"]
    assert [k for k, v in extras.items() if any(r.startswith("trl") for r in v)] == ["trl"]


def test_importing_it_without_trl_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "trl", None)  # `import trl` now raises ImportError
    monkeypatch.delitem(sys.modules, "spo_lab.integrations.trl", raising=False)
    with pytest.raises(ImportError, match=r"`trl` extra"):
        importlib.import_module("spo_lab.integrations.trl")


# ====================================================================== runs on the tiny model
def _dataset():
    from datasets import Dataset

    from spo_lab.models import load_tokenizer
    from spo_lab.tasks import get_task

    tok = load_tokenizer(DEFAULT_MODEL_DIR)  # left padding, <pad>: as spo_lab's trainer
    problems = get_task("arith", tokenizer=tok).load("train")[:PROMPTS]
    return Dataset.from_list([{"prompt": p.prompt, "answer": p.answer} for p in problems]), tok


def arith_reward(completions, answer, **kwargs):
    """A TRL reward function: the dataset's other columns arrive by name."""
    from spo_lab.tasks.arith import reward

    return [reward(c, a) for c, a in zip(completions, answer)]


def _config(mod, out, **overrides):
    settings = dict(output_dir=str(out), max_steps=4, seed=0, report_to="none", use_cpu=True, bf16=False,
                    per_device_train_batch_size=16, max_completion_length=8, temperature=1.0, disable_tqdm=True,
                    gradient_checkpointing=False, learning_rate=1e-4, lr_scheduler_type="constant", logging_steps=1,
                    save_strategy="no", spo_n0=2)
    return mod.SPOConfig(**(settings | overrides))


def _recording(mod):
    """An SPOTrainer that records, per generation batch, what it drew, read, handed to the loss and folded in."""

    class Recording(mod.SPOTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.rec = {k: [] for k in ("draws", "baselines", "rewards", "adv", "loss_adv", "prompts", "local_ids",
                                        "folds", "ref_d", "after_fold")}
            spo, rec = self.spo, self.rec
            draw, baselines, observe = spo.draw, spo.baselines, spo.observe
            spo.draw = lambda: _keep(rec["draws"], draw())
            spo.baselines = lambda ids: _keep(rec["baselines"], baselines(ids))

            def observing(ids, rewards, d=None):
                rho = observe(ids, rewards, d)
                rec["folds"].append((ids.clone(), rewards.clone(), d.clone(), rho.clone()))
                rec["after_fold"].append((spo.tracker.alpha.clone(), spo.tracker.beta.clone()))
                return rho

            spo.observe = observing
            self.reference_d = mod.ResponseCache(len(self.train_dataset), 32, 8, self._tokenizer.pad_token_id)

        def offline_pass(self):
            before = torch.get_rng_state()
            self.rec["offline"] = super().offline_pass()
            assert torch.equal(torch.get_rng_state(), before), "the offline pass changed the run's random stream"
            return self.rec["offline"]

        def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
            if self._batch is not None:
                self.rec["local_ids"].append([x[mod.ID_COLUMN] for x in inputs])
            return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)

        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            if self.model.training:
                self.rec["adv"].append(out["advantages"].clone())
                self.rec["rewards"].append(self._pending.rewards.clone())
                self.rec["prompts"].append(list(self._logs["prompt"])[-len(self._pending.ids):])
            return out

        def _compute_loss(self, model, inputs):
            self.rec["loss_adv"].append(inputs["advantages"].detach().clone())
            return super()._compute_loss(model, inputs)

        def fold_pending(self):
            ev = self._pending
            if ev is not None:  # D as spo_lab.train measures it: its estimator and log-prob function, same batch
                from spo_lab.ppo import logprob_fn

                was_training = self.model.training
                self.model.eval()
                pad = self._tokenizer.pad_token_id
                wide = dataclasses.replace(ev, prompt_ids=mod._pad(ev.prompt_ids, 32, pad, True),
                                           prompt_mask=mod._pad(ev.prompt_mask, 32, 0, True))
                self.rec["ref_d"].append(self.reference_d.observe(logprob_fn(self.model, 1.0, 16), ev.ids, wide))
                self.model.train(was_training)
            super().fold_pending()

    return Recording


def _keep(log: list, x):
    log.append(x.clone())
    return x


def _replay(rec: dict, cfg, num_prompts: int, rows_per_process: int | None = None):
    """Feed spo_lab.spo.SPO the recorded rewards and D; check every draw, baseline, advantage, rho and tracker state."""
    ref = SPO(num_prompts, cfg.generation_batch_size, seed=cfg.seed + 1)
    ref.init_from_counts(*rec["offline"])
    batches = len(rec["draws"])
    assert batches == len(rec["folds"]) >= 3
    for t in range(batches):
        ids = ref.draw()
        assert torch.equal(ids, rec["draws"][t]), f"batch {t}: drawn prompts"
        b = ref.baselines(ids)
        assert torch.equal(b, rec["baselines"][t]), f"batch {t}: baselines"
        adv, _ = ref.advantages(rec["rewards"][t], b)
        local = adv if rows_per_process is None else adv[:rows_per_process]  # process 0's slice
        assert torch.equal(local.float(), rec["adv"][t]), f"batch {t}: advantages"
        f_ids, f_rewards, d, rho = rec["folds"][t]
        assert torch.equal(f_ids, ids) and torch.equal(f_rewards, rec["rewards"][t])
        assert torch.equal(ref.observe(ids, rec["rewards"][t], d), rho), f"batch {t}: rho"
        alpha, beta = rec["after_fold"][t]
        assert torch.equal(ref.tracker.alpha, alpha) and torch.equal(ref.tracker.beta, beta), f"batch {t}: tracker"
    return ref


def test_spo_trainer_computes_what_spo_computes(spo_trl, tmp_path):
    """Four batches of 16 prompts x 1 response, two optimiser steps each (steps_per_generation=2): every step, the
    drawn prompts, baselines, advantages (those TRL's loss reads included), D, rho and tracker equal spo_lab's."""
    torch.set_num_threads(1)
    ds, tok = _dataset()
    cfg = _config(spo_trl, tmp_path, max_steps=8, per_device_train_batch_size=8, steps_per_generation=2)
    assert (cfg.num_generations, cfg.generation_batch_size) == (1, 16)
    tr = _recording(spo_trl)(model=str(DEFAULT_MODEL_DIR), reward_funcs=arith_reward, args=cfg, train_dataset=ds,
                             processing_class=tok)
    tr.train()
    rec = tr.rec
    ref = _replay(rec, cfg, PROMPTS)
    assert torch.equal(ref.tracker.alpha, tr.spo.tracker.alpha)  # the last batch is folded in after train()
    assert tr.offline_responses == 2 * PROMPTS and rec["offline"][1].eq(2).all()
    for t, ids in enumerate(rec["draws"]):
        assert rec["prompts"][t] == [ds[i]["prompt"] for i in ids.tolist()]  # TRL generated for the drawn prompts
        assert rec["local_ids"][t] == ids.tolist()
        handed = torch.cat(rec["loss_adv"][2 * t: 2 * t + 2])  # two optimiser steps over the shuffled batch
        assert torch.equal(handed.sort().values, rec["adv"][t].sort().values)
        assert len(set(ids.tolist())) == 16  # drawn without replacement
    for t, d in enumerate(rec["ref_d"]):
        # float32 log-probs of prompts padded to other widths: equal to rounding (D is up to ~0.5 here)
        assert torch.allclose(rec["folds"][t][2], d, rtol=1e-4, atol=1e-5), f"batch {t}: D"
    assert any(f[2].gt(0).any() for f in rec["folds"]), "no prompt came back: D was never measured"
    assert torch.cat([a for a in rec["adv"]]).abs().sum() > 0  # TRL's own group advantages would all be 0
    logged = {k for row in tr.state.log_history for k in row}
    assert {"spo/tracker/rho_mean", "spo/tracker/D_mean", "spo/sampled/v_mean", "spo/offline_responses"} <= logged


def test_save_and_resume_give_the_same_tracker(spo_trl, tmp_path):
    """A run checkpointed at step 2 and resumed there ends with the tracker, D memory and sampler of the run
    that went straight through; the checkpoint holds the batch that was not folded in yet."""
    torch.set_num_threads(1)
    ds, tok = _dataset()
    cls = _recording(spo_trl)
    cfg = _config(spo_trl, tmp_path / "a", save_strategy="steps", save_steps=2)
    straight = cls(model=str(DEFAULT_MODEL_DIR), reward_funcs=arith_reward, args=cfg, train_dataset=ds,
                   processing_class=tok)
    straight.train()
    saved = torch.load(tmp_path / "a" / "checkpoint-2" / spo_trl.STATE_FILE, weights_only=True)
    assert saved["pending"] is not None and torch.equal(saved["pending"]["ids"], straight.rec["draws"][1])
    assert torch.equal(saved["spo"]["tracker"]["alpha"], straight.rec["after_fold"][0][0])  # batch 1 folded, 2 not

    resumed = cls(model=str(DEFAULT_MODEL_DIR), reward_funcs=arith_reward, args=cfg, train_dataset=ds,
                  processing_class=tok)
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))
    assert "offline" not in resumed.rec  # the checkpoint's tracker already holds the offline pass
    assert [d.tolist() for d in resumed.rec["draws"]] == [d.tolist() for d in straight.rec["draws"][2:]]
    a, b = straight.spo_state_dict(), resumed.spo_state_dict()
    assert torch.equal(a["spo"]["tracker"]["alpha"], b["spo"]["tracker"]["alpha"])
    assert torch.equal(a["spo"]["tracker"]["beta"], b["spo"]["tracker"]["beta"])
    assert torch.equal(a["spo"]["sampler"]["generator"], b["spo"]["sampler"]["generator"])
    assert all(torch.equal(a["divergence"][k], b["divergence"][k]) for k in a["divergence"])


# ====================================================================== the TRL behaviours the wrapper relies on
def test_trl_version_and_the_signatures_it_wraps(spo_trl):
    import trl
    from trl import GRPOTrainer

    assert trl.__version__ == spo_trl.TRL_VERSION, "the trl extra pins the version these tests ran against"
    expected = {"_calculate_rewards": ["self", "inputs", "prompts", "completions", "completion_ids_list"],
                "_generate_and_score_completions": ["self", "inputs"], "_generate": ["self", "prompts"],
                "_compute_loss": ["self", "model", "inputs"], "_save_checkpoint": ["self", "model", "trial"],
                "_load_optimizer_and_scheduler": ["self", "checkpoint"]}
    for name, params in expected.items():
        assert list(inspect.signature(getattr(GRPOTrainer, name)).parameters) == params, name


def test_grpo_config_refuses_one_generation_and_spo_config_takes_it(spo_trl, tmp_path):
    from trl import GRPOConfig

    common = dict(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", per_device_train_batch_size=8)
    with pytest.raises(ValueError, match="at least 2 generations"):
        GRPOConfig(num_generations=1, **common)
    cfg = spo_trl.SPOConfig(**common)
    assert (cfg.num_generations, cfg.num_generations_eval, cfg.generation_batch_size) == (1, 1, 8)
    assert cfg.steps_per_generation == GRPOConfig(num_generations=2, **common).steps_per_generation
    with pytest.raises(ValueError, match="num_generations must be 1"):
        spo_trl.SPOConfig(num_generations=4, **common)
    with pytest.raises(ValueError, match="even"):
        spo_trl.SPOConfig(**(common | {"per_device_train_batch_size": 7}))


def test_grpo_trainer_batch_contract(spo_trl, tmp_path):
    """On TRL's own GRPOTrainer: the loader's batch is the process's generation batch, rewards come back gathered as
    ``[rows, reward functions]``, the scored batch carries the fields SPO reads, and the loss follows its advantages."""
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(1)
    ds, tok = _dataset()
    cfg = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", num_generations=4,
                     per_device_train_batch_size=8, max_completion_length=8, gradient_checkpointing=False,
                     disable_tqdm=True, max_steps=1, seed=0)
    tr = GRPOTrainer(model=str(DEFAULT_MODEL_DIR), reward_funcs=arith_reward, args=cfg, train_dataset=ds,
                     processing_class=tok)
    rows = next(iter(tr.get_train_dataloader()))
    assert len(rows) == cfg.generation_batch_size and {"prompt", "answer"} <= set(rows[0])
    assert [r["prompt"] for r in rows[::4]] == [r["prompt"] for r in rows[3::4]]  # RepeatSampler: 4 in a row
    tr.model.train()
    out = tr._generate_and_score_completions(rows)
    for k in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "advantages"):
        assert out[k].shape[0] == len(rows), k
    assert out["advantages"].shape == (len(rows),) and out["advantages"].dtype == torch.float32
    gen = tr._generate([r["prompt"] for r in rows])
    assert len(gen) == 8 and len(gen[1]) == len(rows) and len(gen[3]) == len(rows)  # completion ids, texts
    r = tr._calculate_rewards(rows, [x["prompt"] for x in rows], gen[3], gen[1])
    assert r.shape == (len(rows), 1)
    out["advantages"] = torch.ones(len(rows))
    tr.current_gradient_accumulation_steps = 1  # set by Trainer's loop before each optimiser step
    with torch.no_grad():
        loss1 = tr._compute_loss(tr.model, out)
        out["advantages"] = 2 * torch.ones(len(rows))
        loss2 = tr._compute_loss(tr.model, out)
    assert torch.allclose(loss2, 2 * loss1)  # on-policy ratio 1: the loss is linear in the advantages it reads


# ====================================================================== two processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_keep_one_tracker(spo_trl, tmp_path):
    """``torch.distributed.run`` with 2 CPU processes (gloo): each generates its half of every batch, and both
    end with the same draws, rewards, D and tracker -- the ones spo_lab.spo.SPO computes from them."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    for _ in range(2):  # a second try only if another program took the free port first
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), __file__, "--worker", str(tmp_path)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=420)
        if proc.returncode == 0 or "address already in use" not in (proc.stdout + proc.stderr).lower():
            break
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    r0, r1 = (torch.load(tmp_path / f"rank{k}.pt", weights_only=False) for k in (0, 1))
    for key in ("draws", "baselines", "rewards", "folds", "after_fold", "offline"):
        assert _same(r0[key], r1[key]), key
    for t, ids in enumerate(r0["draws"]):  # each process generated its contiguous half
        assert r0["local_ids"][t] + r1["local_ids"][t] == ids.tolist()
        assert not torch.equal(r0["adv"][t], r1["adv"][t])
    cfg = _config(spo_trl, tmp_path, per_device_train_batch_size=8)
    cfg.generation_batch_size = 16  # two processes of 8 (this process alone would say 8)
    ref = _replay(r0, cfg, PROMPTS, rows_per_process=8)
    assert torch.equal(ref.tracker.alpha, r0["final_alpha"]) and torch.equal(ref.tracker.alpha, r1["final_alpha"])


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _worker(out: str) -> None:
    """One of two processes: train 3 batches of 16 prompts (8 per process) and save what it recorded."""
    torch.set_num_threads(1)
    mod = _require_trl()
    ds, tok = _dataset()
    cfg = _config(mod, Path(out) / "run", max_steps=3, per_device_train_batch_size=8)
    tr = _recording(mod)(model=str(DEFAULT_MODEL_DIR), reward_funcs=arith_reward, args=cfg, train_dataset=ds,
                         processing_class=tok)
    assert tr.accelerator.num_processes == 2 and cfg.generation_batch_size == 16
    tr.train()
    torch.save(tr.rec | {"final_alpha": tr.spo.tracker.alpha}, Path(out) / f"rank{tr.accelerator.process_index}.pt")


if __name__ == "__main__" and "--worker" in sys.argv:
    _worker(sys.argv[sys.argv.index("--worker") + 1])
