"""One process of the data-parallel tests (tests/test_distributed.py), started by torchrun:

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distributed_worker.py MODE DIR ...

MODE update DIR: load DIR/update.pt (initial model path, rollouts, advantages, settings), run one
    ppo_update per setting on this process's share, rank 0 writes DIR/update-result.pt.
MODE train DIR ARGS...: train with the trainer's flags ARGS; after every step each process writes the
    checksum of its method state and D's memory to DIR/rank<r>.txt (one line per step).
MODE drift DIR ARGS...: the same, but process 1 nudges its tracker after the second step.
MODE hang DIR: process 1 never joins the first collective; process 0 must give up within the timeout.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

import spo_lab.train as T
from spo_lab.distributed import init_world, state_checksum


def update(out: Path) -> None:
    from spo_lab.engines.base import Rollouts
    from spo_lab.models import load_policy
    from spo_lab.ppo import ppo_update, trainable

    world = init_world()
    blob = torch.load(out / "update.pt", weights_only=False)
    results = []
    for settings in blob["settings"]:
        model, _ = load_policy(blob["model"])
        opt = torch.optim.AdamW(trainable(model), lr=1e-3)
        stats = ppo_update(model, opt, Rollouts(**blob["rollouts"]), blob["advantages"], settings,
                           torch.Generator().manual_seed(0), world=world)
        results.append((model.state_dict(), stats))
    world.check_same(lambda: state_checksum([sd for sd, _ in results]), "the updated weights")
    if world.rank == 0:
        torch.save(results, out / "update-result.pt")
    world.close()


def train(out: Path, argv: list[str], drift: bool) -> None:
    step_fn = T.train_step

    def step_and_record(run, step):
        m, batch = step_fn(run, step)
        if drift and run.world.rank == 1 and step == 1:
            run.algo.tracker.alpha[0] += 1e-9  # the smallest disagreement must stop the job
        d = run.d_estimator.state_dict() if run.d_estimator is not None else {}
        with open(out / f"rank{run.world.rank}.txt", "a") as f:
            f.write(f"{step + 1} {state_checksum(run.algo.state_dict())} {state_checksum(d)}\n")
        return m, batch

    T.train_step = step_and_record
    T.main(argv)


def hang() -> None:
    world = init_world()
    if world.rank == 1:
        time.sleep(60)
    else:
        world.gather_objects("hello")


if __name__ == "__main__":
    mode, out = sys.argv[1], Path(sys.argv[2])
    if mode == "update":
        update(out)
    elif mode == "hang":
        from spo_lab.errors import cli_main

        cli_main(lambda argv: hang(), [])
    else:
        from spo_lab.errors import cli_main

        cli_main(lambda argv: train(out, argv, drift=mode == "drift"), sys.argv[3:])
