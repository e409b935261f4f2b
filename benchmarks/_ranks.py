"""Run :class:`litmix.nas.ProxyRanker` on several CPU processes (fork + gloo) from a benchmark script."""

import json
import os
import tempfile
import time

import torch
import torch.multiprocessing as mp

from litmix.nas.ranker import ProxyRanker


def _worker(rank: int, world: int, store: str, out: str, kwargs: dict) -> None:
    torch.set_num_threads(1)
    if world > 1:
        torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    inputs = kwargs.pop("inputs_path", None)
    if inputs is not None:
        kwargs["inputs"], kwargs["targets"] = torch.load(inputs)
    start = time.perf_counter()
    table = ProxyRanker(**kwargs).score_all()
    if world > 1:
        torch.distributed.barrier()
    if rank == 0:
        with open(out, "w") as fh:
            json.dump({"table": table, "seconds": time.perf_counter() - start}, fh)
    if world > 1:
        torch.distributed.destroy_process_group()


def score_on_ranks(procs: int, **kwargs: object) -> tuple[list[dict], float]:
    """Score on ``procs`` processes; returns rank 0's table and its wall time (scoring only, no start-up).

    ``inputs_path`` (a ``torch.save``d ``(inputs, targets)`` pair) is loaded in each process.
    """
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.json")
        if procs == 1:
            _worker(0, 1, "", out, dict(kwargs))
        else:
            mp.start_processes(
                _worker, args=(procs, os.path.join(tmp, "store"), out, dict(kwargs)), nprocs=procs, start_method="fork"
            )
        with open(out) as fh:
            res = json.load(fh)
    return res["table"], float(res["seconds"])
