"""Run by tests/test_train.py under torchrun (2 CPU processes, gloo): one smoke pretraining."""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from bus_paper.config import load_profile
from bus_paper.train.data import load_pool, resolve_root
from bus_paper.train.engine import init_distributed, main_first, shard_batches
from bus_paper.train.pretraining import PretrainStage


def checksum(model) -> float:
    return float(sum(p.detach().double().sum() for p in model.parameters()))


def main(out: Path) -> None:
    profile = load_profile("smoke").replace(**{"pretrain.epochs": 2, "pretrain.batch_size": 4})
    d = init_distributed("cpu")
    root = main_first(d, resolve_root, profile)  # rank 0 writes the phantom and caches first
    images, _ = main_first(d, load_pool, profile, root)
    stage = PretrainStage(profile, images, out / "stage", key="ddp-test")
    init = checksum(stage.model)
    first = next(shard_batches(len(images), 4, 0, stage.dist, True)).tolist()
    stage.fit()
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{stage.dist.rank}.json").write_text(json.dumps({
        "world": stage.dist.world, "checksum": checksum(stage.model), "init_checksum": init,
        "first_batch": first}))
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(Path(sys.argv[1]))
