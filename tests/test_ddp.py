"""DistributedDataParallel over a swapped ResNet: 2 processes, gloo backend, CPU.

After a few SGD steps (momentum, weight decay) the parameters of the DDP run equal those of one process training the
same model on the same global batches.

BatchNorm is the one place where the math of the two runs can differ: DDP without SyncBatchNorm normalizes each
process's shard by that shard's own batch statistics. (SyncBatchNorm is not an option here: it runs on GPUs only,
and the fused blocks compute BatchNorm statistics themselves.) So two cases, each with a reference whose math agrees
with DDP exactly:

- ``frozen_bn``: BatchNorm in eval mode (frozen statistics, trainable affine parameters, the usual fine-tuning set-up):
  every sample's loss is independent of the others, so DDP's averaged shard gradients are the gradient of the mean
  loss over the global batch; reference: one process, the whole global batch.
- ``batch_stats``: BatchNorm in training mode, per-shard statistics: reference: one process running each step as
  gradient accumulation over the same shards (loss of each shard / world size), which normalizes each shard by its own
  statistics as DDP does. DDP broadcasts rank 0's buffers before each forward, so its running statistics are those of
  rank 0's shards; the reference restores the buffers after every shard but the first to match.

Everything runs through the fused ops' training paths (batch-statistic epilogues, folded BN with gradients, add_relu
backward with parameter gradients).
"""
import os
import socket
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

WORLD = 2
STEPS = 3
GLOBAL_BATCH = 8
IMAGE = 16
CLASSES = 10
MODES = ("frozen_bn", "batch_stats")

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model():
    """A small torchvision ResNet (one BasicBlock per stage), swapped: the fused stem and blocks."""
    import pyfastblocks
    from torchvision.models.resnet import BasicBlock, ResNet

    torch.manual_seed(0)
    model = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=CLASSES)
    return pyfastblocks.swap(model)


def _data():
    g = torch.Generator().manual_seed(1)
    xs = torch.randn(STEPS, GLOBAL_BATCH, 3, IMAGE, IMAGE, generator=g)
    ys = torch.randint(0, CLASSES, (STEPS, GLOBAL_BATCH), generator=g)
    return xs, ys


def _optimizer(params):
    return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-4)


def _shard(t, rank):
    per = GLOBAL_BATCH // WORLD
    return t[rank * per:(rank + 1) * per]


def _worker(rank, port, out_dir):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        from torch.nn.parallel import DistributedDataParallel as DDP

        xs, ys = _data()
        for mode in MODES:
            model = _model().train(mode == "batch_stats")
            ddp = DDP(model)  # CPU module: no device_ids; buffers broadcast from rank 0 before each forward
            opt = _optimizer(ddp.parameters())
            losses = []
            for step in range(STEPS):
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(ddp(_shard(xs[step], rank)), _shard(ys[step], rank))
                loss.backward()
                opt.step()
                losses.append(loss.item())
            if rank == 0:
                torch.save({"state": model.state_dict(), "losses": losses}, os.path.join(out_dir, f"{mode}.pt"))
    finally:
        dist.destroy_process_group()


def _reference(mode):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each DDP worker runs; also far faster than 2 threads on a busy 2-core machine
    try:
        return _reference_run(mode)
    finally:
        torch.set_num_threads(threads)


def _reference_run(mode):
    xs, ys = _data()
    model = _model().train(mode == "batch_stats")
    opt = _optimizer(model.parameters())
    for step in range(STEPS):
        opt.zero_grad(set_to_none=True)
        if mode == "frozen_bn":
            F.cross_entropy(model(xs[step]), ys[step]).backward()
        else:
            for rank in range(WORLD):
                saved = {k: v.clone() for k, v in model.named_buffers()} if rank > 0 else None
                (F.cross_entropy(model(_shard(xs[step], rank)), _shard(ys[step], rank)) / WORLD).backward()
                if saved is not None:  # DDP keeps rank 0's running statistics
                    with torch.no_grad():
                        for k, v in model.named_buffers():
                            v.copy_(saved[k])
        opt.step()
    return model.state_dict()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("ddp"))
    mp.start_processes(_worker, args=(_free_port(), out_dir), nprocs=WORLD, join=True, start_method="spawn")
    return {mode: torch.load(os.path.join(out_dir, f"{mode}.pt")) for mode in MODES}


@pytest.mark.parametrize("mode", MODES)
def test_ddp_matches_single_process(ddp_results, mode):
    got = ddp_results[mode]["state"]
    want = _reference(mode)
    assert got.keys() == want.keys()
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=1e-4, atol=1e-5, msg=lambda m, key=key: f"{key}: {m}")
    initial = _model()
    for key, value in initial.named_parameters():  # the steps did train every parameter
        assert not torch.equal(want[key], value.detach()), key
    if mode == "batch_stats":
        for key, value in initial.named_buffers():
            assert not torch.equal(want[key], value), key
    assert all(torch.isfinite(torch.tensor(ddp_results[mode]["losses"])))


if __name__ == "__main__":  # python tests/test_ddp.py: the same check without pytest
    sys.exit(pytest.main([__file__, "-q"]))
