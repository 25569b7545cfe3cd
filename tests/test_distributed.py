"""Data-parallel training on torch.distributed, proven on CPU with gloo and 2 processes (torchrun).

(a) one update on 2 processes gives the weights of one update in one process (to float rounding);
(b) the method state is identical on every process after several steps, and a drifting replica stops the job;
(b') three whole training steps on 2 processes give one process's draws, tracker, metrics and weights;
(c) torchrun SPO and GRPO runs complete, survive a killed process by --resume, and resume on another
    number of processes (SPO 2 -> 1 and 1 -> 2, GRPO 2 -> 1; the last two checked to restore the checkpoint's
    state exactly); their metrics files are whole.
Plus: a process that stops answering ends the job within the process group's timeout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from spo_lab.distributed import ONE, World, state_checksum

WORKER = Path(__file__).resolve().parent / "distributed_worker.py"
ROOT = WORKER.parent.parent


def torchrun(*args, nproc: int = 2, env: dict | None = None, timeout: float = 180):
    """``python -m torch.distributed.run --standalone`` (a free port) with a hard timeout; returns (proc, seconds)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *map(str, args)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    return proc, time.perf_counter() - t0


def _train_flags(toy, out: Path, algo: str, steps: int, *extra) -> list[str]:
    return ["--algo", algo, "--model", str(toy / "model"), "--data-dir", str(toy / "data"), "--out", str(out),
            "--cache-dir", str(out.parent / "cache"), "--steps", str(steps), "--responses-per-step", "16",
            "--group-size", "4", "--n0", "2", "--eval-every", "2", "--save-every", "2", "--lr", "1e-3",
            "--max-new-tokens", "4", "--no-progress", "--no-save-model", *extra]


def _steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


# ====================================================================== the World of one process
def test_one_process_is_the_identity():
    x, r = torch.arange(6), torch.rand(6)
    assert ONE.share(x) is x and ONE.gather(x) is x and ONE.seed(7) == 7
    assert ONE.weighted_means({"a": 0.5}, {"a": 3}) == {"a": 0.5} and ONE.sum_stats({"a": 1.0}) == {"a": 1.0}
    fn = lambda *b: b[0]  # noqa: E731
    assert ONE.sharded(fn) is fn
    assert ONE.gather_batch("rollouts", r, pad_id=0) == ("rollouts", r)


def test_shares_cover_every_row_once_in_order():
    for n in (0, 1, 5, 16, 17):
        for size in (1, 2, 3, 8):
            parts = [World(rank=k, size=size).share(list(range(n))) for k in range(size)]
            assert sum(parts, []) == list(range(n)) and max(map(len, parts)) - min(map(len, parts)) <= 1


def test_checksum_sees_the_smallest_change():
    a = {"tracker": {"alpha": torch.ones(4, dtype=torch.float64)}, "v": 1}
    b = {"tracker": {"alpha": torch.ones(4, dtype=torch.float64)}, "v": 1}
    assert state_checksum(a) == state_checksum(b)
    b["tracker"]["alpha"][2] += 1e-12
    assert state_checksum(a) != state_checksum(b)


# ====================================================================== (a) one update, 2 processes = 1 process
def _rollouts_of(model, tok, n: int = 12):
    """Rows of mixed prompt and response lengths, with the model's own log-probs (a first ratio of 1)."""
    from spo_lab.engines.base import encode_prompts
    from spo_lab.models import token_logprobs

    g = torch.Generator().manual_seed(3)
    prompts = [f"{int(a)}+{int(b)}=" for a, b in torch.randint(0, 999, (n, 2), generator=g)]
    p_ids, p_mask = encode_prompts(tok, prompts)
    r_ids = torch.randint(3, 14, (n, 5), generator=g)
    lengths = torch.randint(1, 6, (n,), generator=g)
    r_mask = (torch.arange(5)[None] < lengths[:, None]).long()
    r_ids = r_ids.masked_fill(r_mask == 0, tok.pad_token_id)
    with torch.no_grad():
        logp = token_logprobs(model, p_ids, p_mask, r_ids, r_mask, temperature=1.0)
    return dict(prompt_ids=p_ids, prompt_mask=p_mask, response_ids=r_ids, response_mask=r_mask,
                logprobs=torch.where(r_mask.bool(), logp, 0.0), texts=[""] * n, truncated=torch.zeros(n, dtype=torch.bool),
                prompt_index=torch.arange(n))


def test_one_update_on_two_processes_equals_one_process(toy, tmp_path):
    from spo_lab.engines.base import Rollouts
    from spo_lab.models import load_policy
    from spo_lab.ppo import PPOSettings, ppo_update, trainable

    model, tok = load_policy(toy / "model")
    rollouts = _rollouts_of(model, tok)
    adv = torch.randn(12, generator=torch.Generator().manual_seed(4))
    settings = [PPOSettings(mini_batches=2), PPOSettings(mini_batches=3, micro_batch_rows=1),
                PPOSettings(mini_batches=2, loss_agg="seq-mean-token-sum"),
                PPOSettings(mini_batches=12)]  # one row per mini-batch: process 0 has none, contributes zeros
    torch.save({"model": str(toy / "model"), "rollouts": rollouts, "advantages": adv, "settings": settings},
               tmp_path / "update.pt")
    proc, _ = torchrun(WORKER, "update", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = torch.load(tmp_path / "update-result.pt", weights_only=False)
    for s, (weights, stats) in zip(settings, results):
        model, _ = load_policy(toy / "model")
        opt = torch.optim.AdamW(trainable(model), lr=1e-3)
        one = ppo_update(model, opt, Rollouts(**rollouts), adv, s, torch.Generator().manual_seed(0))
        moved = max(float((v - load_policy(toy / "model")[0].state_dict()[k]).abs().max()) for k, v in weights.items())
        assert moved > 1e-4, s  # the update did something
        for k, v in model.state_dict().items():
            torch.testing.assert_close(weights[k], v, rtol=1e-5, atol=1e-6, msg=lambda m: f"{s}: {k}: {m}")
        assert stats.keys() == one.keys()
        for k in one:
            assert stats[k] == pytest.approx(one[k], rel=1e-4, abs=1e-6), (s, k)


# ====================================================================== (b) one method state on every process
def test_the_tracker_is_identical_on_every_process(toy, tmp_path):
    out = tmp_path / "spo"
    proc, _ = torchrun(WORKER, "train", tmp_path, *_train_flags(toy, out, "spo", 4, "--sampling", "prioritized"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = ((tmp_path / f"rank{r}.txt").read_text().splitlines() for r in (0, 1))
    assert len(r0) == 4 and r0 == r1  # method state and D's stored responses, after every step
    assert len({line.split()[1] for line in r0}) == 4  # ... and the state moved every step
    assert _steps(out) == [0, 1, 2, 3, 4]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for row in (rows[0], rows[2], rows[4]):  # each process evaluated its share; the means are combined
        assert {"eval/greedy_acc", "eval/greedy_acc/level=1", "eval/sampled_acc/level=2"} <= set(row)
        assert 0 <= row["eval/greedy_acc"] <= 1


def test_a_drifting_tracker_stops_the_job(toy, tmp_path):
    out = tmp_path / "spo"
    proc, seconds = torchrun(WORKER, "drift", tmp_path, *_train_flags(toy, out, "spo", 4))
    assert proc.returncode != 0
    assert "drifted: process(es) [1] disagree with process 0" in proc.stderr, proc.stderr[-3000:]
    assert _steps(out) == [0, 1]  # it stopped at the step whose state disagreed


# ====================================================================== (b') whole steps: 2 processes = 1 process
@pytest.mark.parametrize("rho_mode", ["constant", "kl"])
def test_training_steps_on_two_processes_equal_one_process(tmp_path, rho_mode):
    """Three SPO steps (prioritised draws, the offline pass, evaluation) on 1 and on 2 processes, each prompt
    sampled alone from a seed of its text (tests/distributed_same_worker.py), so both see the same rollouts.
    The draws and the rewards are then the same, so the sampler's state and, with a constant rho, the tracker's
    alpha / beta are bit for bit those of one process. The weights agree to float rounding only (gradients
    are summed across processes in another order), and so does everything computed from them: the
    metrics (1e-5 relative, 1e-6 absolute for the policy loss, a near-zero mean), and with --rho-mode kl the
    divergence D behind rho, hence alpha / beta (allowed: 1e-4 relative)."""
    from spo_lab.models import DEFAULT_MODEL_DIR, load_policy

    data = tmp_path / "data"
    data.mkdir()
    for split, rows in (("train", 120), ("test", 16)):  # the bundled model and the first of its problems
        lines = (ROOT / "data" / "arith" / f"{split}.jsonl").read_text().splitlines()[:rows]
        (data / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    flags = ["--algo", "spo", "--sampling", "prioritized", "--rho-mode", rho_mode, "--data-dir", str(data),
             "--steps", "3", "--responses-per-step", "16", "--n0", "2", "--eval-every", "3", "--eval-max-prompts", "16",
             "--save-every", "0", "--lr", "3e-4", "--max-new-tokens", "6", "--no-progress", "--no-save-model"]
    worker = WORKER.parent / "distributed_same_worker.py"
    one = subprocess.Popen([sys.executable, str(worker), tmp_path, *flags, "--out", tmp_path / "one", "--cache-dir",
                            tmp_path / "cache1"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    two, _ = torchrun(worker, tmp_path, *flags, "--out", tmp_path / "two", "--cache-dir", tmp_path / "cache2")
    _, err = one.communicate(timeout=180)
    assert one.returncode == 0, err[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = (torch.load(tmp_path / f"result-{n}.pt", weights_only=False) for n in (1, 2))

    assert len(a["states"]) == len(b["states"]) == 3
    for x, y in zip(a["states"], b["states"]):
        assert state_checksum(x["sampler"]) == state_checksum(y["sampler"])
        if rho_mode == "constant":
            assert state_checksum(x["tracker"]) == state_checksum(y["tracker"])
        for k in ("alpha", "beta"):
            torch.testing.assert_close(y["tracker"][k], x["tracker"][k], rtol=1e-4, atol=0)

    start = load_policy(DEFAULT_MODEL_DIR)[0].state_dict()
    moved = max(float((v - start[k]).abs().max()) for k, v in a["weights"].items())
    apart = max(float((v - b["weights"][k]).abs().max()) for k, v in a["weights"].items())
    assert moved > 1e-3 and apart < 1e-4, (moved, apart)

    rows = [[json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
            for run in ("one", "two")]
    assert [r["step"] for r in rows[0]] == [r["step"] for r in rows[1]] == [0, 1, 2, 3]
    assert 0 < rows[0][1]["reward/mean"] < 1  # mixed rewards: the advantages move the weights
    assert rho_mode == "constant" or 0 < rows[0][3]["tracker/D_max"] < 0.5  # revisits, D below rho's clip
    for x, y in zip(*rows):
        x, y = ({k: v for k, v in r.items() if not k.startswith("time/")} for r in (x, y))
        assert x.keys() == y.keys()
        for k in x:
            assert y[k] == (pytest.approx(x[k], rel=1e-5, abs=1e-6) if isinstance(x[k], float) else x[k]), (x["step"], k)


# ====================================================================== (c) end to end: kill, resume, rescale
@pytest.mark.parametrize("algo", ["spo", "grpo"])
def test_torchrun_survives_a_killed_process_and_resumes(toy, tmp_path, algo):
    out = tmp_path / algo
    flags = _train_flags(toy, out, algo, 5)
    proc, seconds = torchrun("-m", "spo_lab.train", *flags, env={"SPO_LAB_FAILPOINT": "step-rank1:3"})
    assert proc.returncode != 0 and seconds < 120
    assert "spo_lab.train FAILED" in proc.stderr and "rank      : 1" in proc.stderr, proc.stderr[-3000:]
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 2 and len(ck["rank_rng"]) == 2

    proc, _ = torchrun("-m", "spo_lab.train", *flags, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _steps(out) == [0, 1, 2, 3, 4, 5]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["responses"] for r in rows[1:]] == [16 * k for k in range(1, 6)]
    assert {json.loads(line)["step"] for line in (out / "samples.jsonl").read_text().splitlines()} == {2, 4, 5}
    if algo == "spo":  # the same global batch on another number of processes: one process extends the run
        one = subprocess.run([sys.executable, "-m", "spo_lab.train", *_train_flags(toy, out, algo, 6), "--resume"],
                             capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert one.returncode == 0, one.stderr[-3000:]
        assert _steps(out) == [0, 1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("algo, before, after", [("spo", 1, 2), ("grpo", 2, 1)])
def test_resume_on_another_number_of_processes(toy, tmp_path, algo, before, after):
    """A run checkpointed on ``before`` processes and extended on ``after``: every process restores exactly
    the checkpoint's method state, D's memory and mini-batch generator, and the metrics file has every step once."""
    out = tmp_path / algo
    worker = WORKER.parent / "distributed_same_worker.py"

    def launch(nproc: int, steps: int, *extra):
        args = [worker, tmp_path, *_train_flags(toy, out, algo, steps, *extra)]
        if nproc == 1:
            proc = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=180,
                                  cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
        else:
            proc, _ = torchrun(*args, nproc=nproc)
        assert proc.returncode == 0, proc.stderr[-3000:]

    launch(before, 3)
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 3 and len(ck.get("rank_rng", [None])) == before
    held = {"algorithm": state_checksum(ck["algorithm"]), "divergence": state_checksum(ck.get("divergence", {})),
            "gen": state_checksum(ck["rng"]["gen"]), "start": 3}
    launch(after, 5, "--resume")
    for r in range(after):
        assert json.loads((tmp_path / f"restored-rank{r}.json").read_text()) == held, r
    assert not (tmp_path / f"restored-rank{after}.json").exists()
    assert _steps(out) == [0, 1, 2, 3, 4, 5]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["responses"] for r in rows[1:]] == [16 * k for k in range(1, 6)]


def test_a_process_that_stops_answering_ends_the_job_within_the_timeout(tmp_path):
    proc, seconds = torchrun(WORKER, "hang", tmp_path, env={"SPO_LAB_DIST_TIMEOUT": "3"}, timeout=60)
    assert proc.returncode != 0 and seconds < 45  # process 1 would sleep 60 s
    assert "process 0 of 2: all_gather_object failed" in proc.stderr and "within 3 s" in proc.stderr, proc.stderr[-3000:]


# ====================================================================== --engine vllm: one engine per process
def _recording_vllm(monkeypatch, on_cpu: bool) -> list[dict]:
    """A stand-in for the ``vllm`` package whose ``LLM(...)`` records its keyword arguments and the variables
    vLLM's executors read (no vLLM here, and no GPU); returns the list the calls are appended to."""
    import types

    calls: list[dict] = []

    class LLM:
        def __init__(self, **kw):
            calls.append({"kwargs": kw, "env": {k: os.environ.get(k) for k in
                                                ("RANK", "LOCAL_RANK", "VLLM_ENABLE_V1_MULTIPROCESSING")}})
            core = type("InprocClient" if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0" else "SyncMPClient",
                        (), {})()
            self.llm_engine = types.SimpleNamespace(engine_core=core)

    from fake_vllm import vllm_engine_module

    vllm_engine_module(monkeypatch, LLM=LLM, on_cpu=on_cpu)
    import spo_lab.engines as engines_pkg

    monkeypatch.setattr(engines_pkg, "vllm", sys.modules["spo_lab.engines.vllm"], raising=False)
    for name in ("RANK", "LOCAL_RANK", "VLLM_ENABLE_V1_MULTIPROCESSING"):  # unset now, restored afterwards
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    return calls


@pytest.mark.parametrize("on_cpu", [False, True], ids=["gpu-build", "cpu-build"])
def test_vllm_engine_per_process_uses_the_external_launcher(toy, monkeypatch, on_cpu):
    """``--engine vllm`` under torchrun: every process's vLLM is built with the external_launcher executor on
    its own GPU (LOCAL_RANK) with its own seed; one process builds it exactly as before (no vLLM, no GPU here:
    the LLM(...) calls are recorded, not run)."""
    from spo_lab.models import load_policy
    from spo_lab.train import Config, _build_engine

    calls = _recording_vllm(monkeypatch, on_cpu)
    policy, tok = load_policy(toy / "model")
    cfg = Config(engine="vllm", model=str(toy / "model"), seed=5, vllm_max_model_len=64)
    engines = []
    for world in (ONE, World(rank=0, size=4, local_rank=0), World(rank=3, size=4, local_rank=1)):
        for name in ("RANK", "LOCAL_RANK"):  # each process of a job starts with torchrun's variables unread
            os.environ.pop(name, None)
        engines.append(_build_engine(cfg, policy, tok, world))
    today = dict(model=str(toy / "model"), dtype="float32", seed=5, logprobs_mode="processed_logprobs",
                 generation_config="vllm", enable_sleep_mode=False, max_model_len=64,
                 **({"kv_cache_memory_bytes": 1 << 30} if on_cpu else {"gpu_memory_utilization": 0.5}))
    one, rank0, rank3 = calls
    assert one == {"kwargs": today, "env": {"RANK": None, "LOCAL_RANK": None, "VLLM_ENABLE_V1_MULTIPROCESSING": None}}
    assert not engines[0].in_process
    for call, world in ((rank0, World(rank=0, size=4)), (rank3, World(rank=3, size=4))):
        assert call["kwargs"] == {**today, "seed": world.seed(5), "distributed_executor_backend": "external_launcher",
                                  "tensor_parallel_size": 1}
    assert rank0["kwargs"]["seed"] == 5 and rank3["kwargs"]["seed"] not in (5, rank0["kwargs"]["seed"])
    assert rank3["env"] == {"RANK": "3", "LOCAL_RANK": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    assert all(e.in_process and e.weight_sync == "iterator" for e in engines[1:])
    assert os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") is None  # put back as it was
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "0")  # torchrun says GPU 0, the world says 1: refused, nothing built
    with pytest.raises(ValueError, match="LOCAL_RANK=0 in the environment, but this process is 1"):
        _build_engine(cfg, policy, tok, World(rank=3, size=4, local_rank=1))
    assert len(calls) == 3
    for e in engines:
        e.close()


# ====================================================================== other launchers: accelerate, MPI
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_lora_run_starts_from_the_same_adapter_in_every_process(toy, tmp_path):
    """A LoRA adapter is drawn at random as the model is built: every process must draw the same one (before, each
    drew its own and the replicas' checksum stopped the job at the first step)."""
    out = tmp_path / "lora"
    proc, _ = torchrun("-m", "spo_lab.train", *_train_flags(toy, out, "spo", 2, "--lora-rank", "4"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _steps(out) == [0, 1, 2]


def test_accelerate_launch_trains_on_two_processes(toy, tmp_path):
    """``accelerate launch --multi_gpu --num_processes 2`` (torchrun underneath; gloo on a CPU-only machine)."""
    pytest.importorskip("accelerate")
    out = tmp_path / "spo"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "spo_lab.train", *_train_flags(toy, out, "spo", 2)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _steps(out) == [0, 1, 2]
    assert len(torch.load(out / "checkpoint.pt", weights_only=True)["rank_rng"]) == 2  # two processes trained


def test_mpi_variables_make_one_group(tmp_path):
    """Processes started by mpirun (or ``accelerate launch --mpirun_hostfile``) carry MPI's variables, not torchrun's."""
    code = ("from spo_lab.distributed import init_world; w = init_world(20); "
            "print(w.rank, w.size, w.gather_objects(w.rank)); w.close()")
    port = str(_free_port())
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT")}
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**env, "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": str(r),
                                              "OMPI_COMM_WORLD_LOCAL_RANK": str(r), "MASTER_PORT": port})
             for r in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert [o.strip() for o, _ in outs] == ["0 2 [0, 1]", "1 2 [0, 1]"]
