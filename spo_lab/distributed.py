"""Several processes: data-parallel training on ``torch.distributed``, one global batch, one method state.

    torchrun --standalone --nproc_per_node 2 -m spo_lab.train --algo spo --steps 300 --out runs/spo-dp2

``torchrun`` starts N copies of the trainer; :func:`init_world` joins them into one process group and
returns the :class:`World` every part of the trainer asks. Without torchrun's ``RANK`` / ``WORLD_SIZE``
variables the world is :data:`ONE` and every method below returns its input untouched: one process runs
exactly the code it always ran. Other launchers:

- ``accelerate launch --multi_gpu --num_processes N -m spo_lab.train ...`` runs torchrun underneath (the
  same variables), on GPUs and on a CPU-only machine alike (then gloo). ``accelerate launch --cpu
  --num_processes N`` does NOT start N processes: accelerate 1.x runs one plain process there, unless
  given an MPI hostfile (``--mpirun_hostfile``), when ``mpirun`` starts them.
- ``mpirun`` (directly or through accelerate) sets MPI's variables instead (Open MPI ``OMPI_COMM_WORLD_*``,
  MPICH / Intel MPI ``PMI_*``, MVAPICH ``MV2_COMM_WORLD_*``); :func:`init_world` reads them when torchrun's
  are absent, with ``MASTER_ADDR`` / ``MASTER_PORT`` defaulting to 127.0.0.1:29500 (one machine; set both
  for several), as accelerate itself does.

How N processes train the algorithm of one process (the global batch of ``--responses-per-step``):

- **Method state replicated, updated from gathered evidence.** Every process holds the whole method
  state (SPO's tracker and sampler, the group methods' generator) and draws the same global batch from
  the same random stream. Each generates, rewards and scores its contiguous share of the prompts; the
  rows are gathered in rank order (:meth:`World.gather_batch`), so every process then folds the same
  evidence, in the same order as one process, into its replica. A checksum of the state is compared
  across processes after every step (:meth:`World.check_same`): a replica that drifts stops the job.
- **Advantages over the global batch.** The method's ``advantages`` sees all R gathered rewards: SPO's
  mean and unbiased std are those of one process, computed from the same numbers in the same order
  (gathering R floats costs what all-reducing their sum, sum of squares and count costs, and it keeps
  the group methods' groups whole).
- **One mini-batch, split across processes.** Every process shuffles the global batch with the same
  generator; each mini-batch is cut into N contiguous shares, one per process. Each share's loss is
  already divided by the whole mini-batch's token count (token-mean) or row count (seq-mean-*), so
  the gradients are SUMMED across processes (:meth:`World.all_reduce_sum_`), never averaged: the sum is
  the gradient of the mini-batch's loss, as in one process, to float rounding. Clipping and the
  optimiser step then run on identical gradients, so the weights stay identical everywhere.
- **D's stored responses on every process.** The official D estimator (``ResponseCache``) is
  replicated too: its one scoring pass per step is split across processes (:meth:`World.sharded`) and
  the log-probs gathered, so every replica stores every row and the next visit of a prompt finds its
  stored response whichever process draws it.

Only rank 0 writes the run folder (metrics, samples, checkpoints, the final model); a checkpoint holds
the method state once, plus each process's sampling stream. Every process reads the checkpoint it
resumes from, so on several machines ``--out`` must be on a filesystem they share.

The process group has a timeout (``SPO_LAB_DIST_TIMEOUT`` seconds, default 1800): a process that waits
longer for another one stops with a :class:`DistributedError`. ``torchrun`` ends the whole job as soon
as one process dies, and ``--resume`` continues from the last checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from .engines.base import Rollouts, concat_rollouts
from .errors import UserError

__all__ = ["World", "ONE", "init_world", "state_checksum", "DistributedError", "TIMEOUT_ENV", "BACKEND_ENV"]

TIMEOUT_ENV = "SPO_LAB_DIST_TIMEOUT"
"""Seconds a process waits for the others in one collective before it gives up (default 1800)."""
BACKEND_ENV = "SPO_LAB_DIST_BACKEND"
"""The process group's backend ('' = gloo on CPUs, gloo for CPU tensors and NCCL for CUDA ones on GPUs)."""
BUCKET = 2**25
"""Gradient elements all-reduced in one call (128 MiB of float32)."""


class DistributedError(UserError):
    """Another process died, stopped answering, or disagrees on what must be identical everywhere."""


@dataclass(frozen=True)
class World:
    """This process's place in the job: ``rank`` of ``size`` processes (``local_rank`` on its machine)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    timeout_s: float = 0.0
    owns_group: bool = False
    """the group was started by :func:`init_world` (and is ended by :meth:`close`)"""

    # ------------------------------------------------------------------ who does what
    def bounds(self, n: int) -> tuple[int, int]:
        """``[lo, hi)``: this process's contiguous share of ``n`` items (sizes differ by at most one)."""
        return n * self.rank // self.size, n * (self.rank + 1) // self.size

    def share(self, items):
        """This process's contiguous share of a sequence or tensor (all of it, the same object, in one process)."""
        if self.size == 1:
            return items
        lo, hi = self.bounds(len(items))
        return items[lo:hi]

    def seed(self, base: int) -> int:
        """A seed for this process's own random streams: ``base`` on rank 0, one derived from (base, rank) elsewhere."""
        return base if self.rank == 0 else int(np.random.SeedSequence([base, self.rank]).generate_state(1)[0])

    def device(self, name: str) -> str:
        """The device of ``--device name`` for this process: with several processes, cuda means cuda:<local rank>."""
        if self.size > 1 and name in ("auto", "cuda") and torch.cuda.is_available():
            torch.cuda.set_device(self.local_rank)
            return f"cuda:{self.local_rank}"
        return name

    # ------------------------------------------------------------------ collectives (no-ops in one process)
    @contextmanager
    def _collective(self, what: str):
        try:
            yield
        except RuntimeError as err:  # DistBackendError and gloo's timeouts are RuntimeErrors
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
            raise DistributedError(
                f"process {self.rank} of {self.size}: {what} failed ({first}); another process died or did not "
                f"answer within {self.timeout_s:g} s ({TIMEOUT_ENV}); resume the run with --resume") from err

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every process (a small picklable value)."""
        if self.size == 1:
            return obj
        box = [obj]
        with self._collective("broadcast"):
            dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_objects(self, obj) -> list:
        """Every process's ``obj``, in rank order (small picklable values)."""
        if self.size == 1:
            return [obj]
        out = [None] * self.size
        with self._collective("all_gather_object"):
            dist.all_gather_object(out, obj)
        return out

    def gather(self, t: Tensor, total: int | None = None) -> Tensor:
        """Every process's ``t`` concatenated along dim 0 in rank order (first dims may differ, the rest must not).

        ``total``: ``t`` is this process's :meth:`share` of ``total`` rows (the sizes are known: one collective less).
        """
        if self.size == 1:
            return t
        flag = t.dtype == torch.bool
        x = t.to(torch.uint8) if flag else t
        with self._collective(f"all_gather of a {tuple(t.shape)} tensor"):
            if total is None:
                n = torch.tensor([x.shape[0]], device=x.device)
                sizes = [torch.zeros_like(n) for _ in range(self.size)]
                dist.all_gather(sizes, n)
            else:
                sizes = [hi - lo for lo, hi in (World(k, self.size).bounds(total) for k in range(self.size))]
            m = max(int(s) for s in sizes)
            pad = x.new_zeros((m - x.shape[0], *x.shape[1:]))
            parts = [x.new_empty((m, *x.shape[1:])) for _ in range(self.size)]
            dist.all_gather(parts, torch.cat([x, pad]).contiguous())
        out = torch.cat([p[: int(s)] for p, s in zip(parts, sizes)])
        return out.bool() if flag else out

    def all_reduce_sum_(self, tensors: list[Tensor]) -> None:
        """Sum ``tensors`` over the processes, in place, in buckets of :data:`BUCKET` elements."""
        if self.size == 1:
            return
        with self._collective("the gradient all-reduce"):
            i = 0
            while i < len(tensors):
                j, n = i, 0
                while j < len(tensors) and (j == i or n + tensors[j].numel() <= BUCKET) \
                        and tensors[j].dtype == tensors[i].dtype and tensors[j].device == tensors[i].device:
                    n, j = n + tensors[j].numel(), j + 1
                flat = torch.cat([t.reshape(-1) for t in tensors[i:j]])
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)
                for t, part in zip(tensors[i:j], flat.split([t.numel() for t in tensors[i:j]])):
                    t.copy_(part.view_as(t))
                i = j

    def all_reduce_grads(self, params: list[torch.nn.Parameter]) -> None:
        """Sum the gradients of ``params`` over the processes (a process with no rows contributes zeros)."""
        if self.size == 1:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        self.all_reduce_sum_([p.grad for p in params])

    def sum_stats(self, stats: dict[str, float]) -> dict[str, float]:
        """Each key's sum over the processes (the micro-batch shares of a mini-batch's statistics)."""
        if self.size == 1:
            return stats
        out: dict[str, float] = {}
        for part in self.gather_objects(stats):
            for k, v in part.items():
                out[k] = out.get(k, 0.0) + v
        return out

    def weighted_means(self, values: dict[str, float], weights: dict[str, float]) -> dict[str, float]:
        """Each key's mean over the processes, weighted by ``weights[key]`` (e.g. the problems behind a mean)."""
        if self.size == 1:
            return values
        total: dict[str, list[float]] = {}
        for vals, w in self.gather_objects((values, weights)):
            for k, v in vals.items():
                s = total.setdefault(k, [0.0, 0.0])
                s[0], s[1] = s[0] + w[k] * v, s[1] + w[k]
        return {k: s[0] / s[1] for k, s in total.items() if s[1] > 0}

    # ------------------------------------------------------------------ the trainer's uses
    def gather_batch(self, rollouts: Rollouts, rewards: Tensor, *, pad_id: int) -> tuple[Rollouts, Tensor]:
        """The global batch on every process: each process's rows and rewards, in rank order (one collective).

        Prompts are left-padded and responses right-padded (``pad_id``, masks and log-probs 0) to the
        widest process's widths, the layout one engine call gives a batch of mixed lengths.
        """
        if self.size == 1:
            return rollouts, rewards
        own = {f.name: getattr(rollouts, f.name) for f in dataclasses.fields(rollouts)}
        own = {k: v.clone() if isinstance(v, Tensor) else v for k, v in own.items()}  # a view would send its base
        parts = self.gather_objects((own, rewards.clone()))
        return (concat_rollouts([Rollouts(**part) for part, _ in parts], pad_id=pad_id),
                torch.cat([r for _, r in parts]))

    def sharded(self, fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        """``fn(*batch) -> [N, ...]``, each process computing a share of the N rows, gathered (one process: ``fn``)."""
        if self.size == 1:
            return fn

        def run(*batch: Tensor) -> Tensor:
            n = batch[0].shape[0]
            lo, hi = self.bounds(n)
            if hi > lo:
                return self.gather(fn(*(t[lo:hi] for t in batch)), n)
            return self.gather(fn(*(t[:1] for t in batch))[:0], n)  # no rows here: an empty part of the right shape

        return run

    def check_same(self, checksum: Callable[[], str], what: str) -> None:
        """Stop the job (:class:`DistributedError` on every process) unless ``checksum()`` agrees everywhere."""
        if self.size == 1:
            return
        sums = self.gather_objects(checksum())
        differ = [r for r, s in enumerate(sums) if s != sums[0]]
        if differ:
            raise DistributedError(f"{what} drifted: process(es) {differ} disagree with process 0 "
                                   f"(checksums {', '.join(s[:12] for s in sums)}); the replicas must stay identical")

    def close(self) -> None:
        """End the process group if :func:`init_world` started it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


ONE = World()
"""One process: every collective is the identity."""


#: (size, rank, local rank) variables of the MPI launchers, in the order they are tried
MPI_ENV = (("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK"),
           ("PMI_SIZE", "PMI_RANK", "MPI_LOCALRANKID"),
           ("MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_LOCAL_RANK"))


def _env_from_mpi() -> None:
    """torchrun's ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK`` (and a one-machine rendezvous) from an MPI launcher's
    variables, when torchrun's are absent: ``mpirun``, or ``accelerate launch --mpirun_hostfile``."""
    if "WORLD_SIZE" in os.environ:
        return
    for size, rank, local in MPI_ENV:
        if size in os.environ and rank in os.environ:
            os.environ.update(WORLD_SIZE=os.environ[size], RANK=os.environ[rank])
            os.environ.setdefault("LOCAL_RANK", os.environ.get(local, "0"))
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", "29500")
            return


def init_world(timeout_s: float | None = None) -> World:
    """The :class:`World` of this process: :data:`ONE`, or the group ``torchrun`` / ``accelerate launch`` /
    ``mpirun`` describe.

    An already initialised default group (another launcher's) is used as it is. Otherwise, with
    ``WORLD_SIZE`` > 1 in the environment (or MPI's variables, see the module docstring), the group is
    initialised from it (``env://``) with backend ``SPO_LAB_DIST_BACKEND`` (default: gloo, plus NCCL for
    CUDA tensors when a GPU is there) and a timeout of ``timeout_s`` (default ``SPO_LAB_DIST_TIMEOUT``,
    else 1800 s).
    """
    timeout_s = float(timeout_s if timeout_s is not None else os.environ.get(TIMEOUT_ENV, "1800"))
    owns = False
    if not dist.is_initialized():
        _env_from_mpi()
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return ONE
        backend = os.environ.get(BACKEND_ENV) or ("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
        owns = True
    if dist.get_world_size() == 1:
        return World(timeout_s=timeout_s, owns_group=owns)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return World(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=local, timeout_s=timeout_s,
                 owns_group=owns)


def state_checksum(state) -> str:
    """sha1 of a (nested) state dict's tensors and plain values, in key order: equal states, equal sums."""
    h = hashlib.sha1()

    def feed(x) -> None:
        if isinstance(x, Tensor):
            h.update(f"{x.dtype}{tuple(x.shape)}".encode())
            h.update(x.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(x, dict):
            for k in sorted(x, key=str):
                h.update(str(k).encode())
                feed(x[k])
        elif isinstance(x, (list, tuple)):
            for v in x:
                feed(v)
        else:
            h.update(repr(x).encode())

    feed(state)
    return h.hexdigest()


# ====================================================================== scaling benchmark (command line)
def bench(layouts: list[str], train_args: list[str], *, rounds: int = 3, out: str = "runs/dp-bench",
          skip: int = 2, timeout_s: float = 1800) -> list[dict]:
    """Median step time of ``python -m spo_lab.train TRAIN_ARGS`` per layout ``"PxT"`` (P processes of T threads).

    The layouts take turns, round after round, in fresh ``torchrun --standalone`` jobs, so they see the
    same machine load; a step's time is the sum of its phases (``time/<phase>``, rank 0's clock: the
    step is synchronous), its first ``skip`` steps and the last (evaluation) left out. Returns one row
    per layout: its per-round medians, their median, and the speed-up over the first layout.
    """
    import json
    import statistics
    import subprocess
    import sys
    from pathlib import Path

    from .keys import PHASES, time_key

    times: dict[str, list[float]] = {lay: [] for lay in layouts}
    for r in range(rounds):
        for lay in layouts:
            procs, threads = (int(x) for x in lay.split("x"))
            folder = Path(out) / f"{lay}-round{r}"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
                   "-m", "spo_lab.train", *train_args, "--num-threads", str(threads), "--out", str(folder),
                   "--overwrite", "--no-progress", "--no-save-model"]
            subprocess.run(cmd, check=True, timeout=timeout_s, stdout=subprocess.DEVNULL,
                           env={**os.environ, "OMP_NUM_THREADS": str(threads)})
            rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()][1 + skip : -1]
            times[lay].append(statistics.median(sum(row.get(time_key(p), 0.0) for p in PHASES) for row in rows))
    base = statistics.median(times[layouts[0]])
    return [{"layout": lay, "rounds_ms": [round(1000 * t) for t in ts],
             "median_ms": round(1000 * statistics.median(ts)), "speedup": round(base / statistics.median(ts), 2)}
            for lay, ts in times.items()]


def main(argv: list[str] | None = None) -> int:
    """``python -m spo_lab.distributed bench [--layouts 1x1 2x1 ...] [--rounds 3] [--out DIR] [--json FILE] -- TRAIN FLAGS``."""
    import argparse
    import json
    import platform
    import sys
    from pathlib import Path

    argv = sys.argv[1:] if argv is None else argv
    own, train_args = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(prog="python -m spo_lab.distributed", description=bench.__doc__.split("\n")[0])
    parser.add_argument("command", choices=["bench"])
    parser.add_argument("--layouts", nargs="+", default=["1x1", "1x2", "2x1"], help="PxT: P processes of T threads")
    parser.add_argument("--rounds", type=int, default=3, help="turns each layout takes")
    parser.add_argument("--out", default="runs/dp-bench", help="folder of the benchmark's runs")
    parser.add_argument("--json", default="", help="also write the rows, the command and the machine's load here")
    args = parser.parse_args(own)
    load_before = os.getloadavg()
    rows = bench(args.layouts, train_args, rounds=args.rounds, out=args.out)
    for row in rows:
        print(f"{row['layout']:>5}  median step {row['median_ms']:>6} ms  x{row['speedup']:<5} "
              f"rounds {row['rounds_ms']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "command": ["python", "-m", "spo_lab.distributed", *argv], "rows": rows,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                        "load_average_1_5_15_before": [round(x, 2) for x in load_before],
                        "load_average_1_5_15_after": [round(x, 2) for x in os.getloadavg()]}}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
