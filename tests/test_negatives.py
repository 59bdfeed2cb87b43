import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vitrine.training.negatives import HardNegativeMiner, MemoryBank, gather_from_processes


def test_memory_bank_is_fifo():
    bank = MemoryBank(size=4, dim=2)
    bank.push(torch.ones(3, 2), torch.tensor([0, 1, 2]), step=0)
    assert len(bank) == 3
    bank.push(torch.full((2, 2), 2.0), torch.tensor([3, 4]), step=1)
    vectors, labels = bank.get(step=1)
    assert sorted(labels.tolist()) == [1, 2, 3, 4]  # label 0, the oldest, was overwritten
    assert len(vectors) == 4


def test_memory_bank_drops_stale_entries():
    bank = MemoryBank(size=10, dim=2, max_age=5)
    bank.push(torch.ones(2, 2), torch.tensor([0, 1]), step=0)
    bank.push(torch.ones(2, 2), torch.tensor([2, 3]), step=8)
    _, labels = bank.get(step=9)
    assert sorted(labels.tolist()) == [2, 3]


def test_memory_bank_keeps_no_gradient():
    bank = MemoryBank(size=4, dim=2)
    bank.push(torch.ones(2, 2, requires_grad=True), torch.tensor([0, 1]), step=0)
    assert not bank.get(0)[0].requires_grad


def test_miner_returns_nearest_products_but_not_the_positive():
    products = np.eye(4, dtype=np.float32)
    products[1] = np.array([0.9, 0.1, 0, 0]) / np.linalg.norm([0.9, 0.1])
    miner = HardNegativeMiner(count=2, refresh_every=10)
    assert miner.due(0)
    miner.refresh(products, step=0)
    assert not miner.due(5) and miner.due(10)
    mined = miner.mine(np.array([[1.0, 0, 0, 0]], dtype=np.float32), positives=np.array([0]))
    assert mined[0, 0] == 1  # the look-alike
    assert 0 not in mined[0]


def test_gather_without_process_group_is_identity():
    tensor = torch.randn(3, 2)
    assert gather_from_processes(tensor) is tensor


def _gather_worker(rank: int, world: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    local = torch.full((2, 3), float(rank + 1), requires_grad=True)
    gathered = gather_from_processes(local)
    gathered.sum().backward()
    results[rank] = (gathered.detach().tolist(), local.grad.tolist())
    dist.destroy_process_group()


def test_gather_across_two_processes_keeps_local_gradient():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_gather_worker, args=(2, port, results), nprocs=2, join=True)
    for rank in range(2):
        gathered, grad = results[rank]
        assert gathered == [[1.0] * 3] * 2 + [[2.0] * 3] * 2  # every process sees both batches, in rank order
        # Each process's loss sums the whole gathered tensor, so the local part receives the gradient of
        # both processes' losses (summed in backward); DDP then averages parameter gradients.
        assert np.allclose(grad, 2.0)
