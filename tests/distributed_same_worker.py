"""One process of the 1-versus-2-processes training comparison (tests/test_distributed.py), run as

    python tests/distributed_same_worker.py DIR TRAIN FLAGS...                      # one process
    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distributed_same_worker.py DIR TRAIN FLAGS...

It trains with the trainer's flags through :class:`PerPromptEngine` (every prompt sampled alone, from a seed
of its text), so a prompt's responses do not depend on which process samples it, with which other prompts,
or how many processes there are. Rank 0 then writes ``DIR/result-<processes>.pt``: the method state after
every step (``states``) and the final weights (``weights``). With ``--resume``, each process also writes
``DIR/restored-rank<r>.json``: checksums of the method state, D's memory and the mini-batch generator as
restored from the checkpoint, before the first step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from pathlib import Path

import torch

import spo_lab.train as T
from spo_lab.distributed import state_checksum
from spo_lab.engines.base import concat_rollouts, seeded
from spo_lab.engines.hf import HFEngine


class PerPromptEngine:
    """An HFEngine that samples each prompt in a call of its own, under a seed of the prompt's text."""

    def __init__(self, inner: HFEngine):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def generate(self, prompts: list[str], n: int = 1, **kw):
        parts = []
        for i, prompt in enumerate(prompts):
            with seeded(int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:4], "little")):
                part = self.inner.generate([prompt], n, **kw)
            parts.append(dataclasses.replace(part, prompt_index=part.prompt_index + i))
        return concat_rollouts(parts, pad_id=self.inner.tokenizer.pad_token_id)


def main(out: Path, argv: list[str]) -> None:
    from spo_lab.models import load_tokenizer

    cfg = T.parse_args(argv)
    states, runs, step_fn = [], [], T.train_step

    def step_and_record(run, step):
        m, batch = step_fn(run, step)
        states.append(run.algo.state_dict())
        runs[:] = [run]
        return m, batch

    T.train_step = step_and_record
    restore = T._restore

    def restore_and_record(run, ck):
        restore(run, ck)
        d = run.d_estimator.state_dict() if run.d_estimator is not None else {}
        sums = {"algorithm": state_checksum(run.algo.state_dict()), "divergence": state_checksum(d),
                "gen": state_checksum(run.gen.get_state()), "start": run.start}
        (out / f"restored-rank{run.world.rank}.json").write_text(json.dumps(sums))

    T._restore = restore_and_record
    T.train(cfg, engine=PerPromptEngine(HFEngine(None, load_tokenizer(cfg.model))))
    run = runs[0]
    if run.world.rank == 0:
        weights = {k: v.detach().clone() for k, v in run.policy.state_dict().items()}
        torch.save({"states": states, "weights": weights}, out / f"result-{run.world.size}.pt")


if __name__ == "__main__":
    from spo_lab.errors import cli_main

    cli_main(lambda argv: main(Path(argv[0]), argv[1:]), sys.argv[1:])
