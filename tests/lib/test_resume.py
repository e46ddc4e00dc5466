"""Exact resume: a SIGKILLed run continues with the losses of the uninterrupted run; reproducible data pipeline."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.transforms import Compose, RandGaussianNoised

from common.data.contract import DataContractError
from common.data.dataset import (
    SKIPPED_KEY,
    EpochIndex,
    PretrainingDataset,
    ResumableSampler,
    pretraining_collate,
    sample_seed,
)
from common.engines.checkpoint import find_checkpoints, latest_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _resume_worker as worker

WORKER = Path(__file__).resolve().parent / "_resume_worker.py"
EPOCH_LENGTH = worker.NUM_RECORDS // worker.BATCH_SIZE
TOTAL = worker.MAX_EPOCHS * EPOCH_LENGTH


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[dict[int, float], Path]:
    """The uninterrupted run: losses of every iteration and all its checkpoints."""
    out = tmp_path_factory.mktemp("reference")
    losses = worker.run_training(out, keep_last=None)
    assert sorted(losses) == list(range(1, TOTAL + 1))
    return losses, out / "checkpoints"


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(reference, tmp_path):
    ref_losses, _ = reference
    stall_after = 8  # checkpoints at 3, 5 (epoch end) and 6: the newest is one iteration into epoch 2
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), str(tmp_path), "--stall-after", str(stall_after)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    losses_file = tmp_path / "losses.txt"
    deadline = time.monotonic() + 300  # generous: importing torch/MONAI on a loaded 2-core box is slow
    try:
        while not (losses_file.exists() and len(worker.read_losses(losses_file)) >= stall_after):
            if proc.poll() is not None:
                pytest.fail(f"worker exited early ({proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("worker did not reach the kill point in time")
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    killed = worker.read_losses(losses_file)
    assert sorted(killed) == list(range(1, stall_after + 1))
    assert all(killed[i] == ref_losses[i] for i in killed)
    path, checkpoint = latest_checkpoint(tmp_path / "checkpoints")
    start = checkpoint["trainer"]["iteration"]
    assert start == 6 and start % EPOCH_LENGTH != 0  # resumes mid-epoch, then crosses the 10 -> 11 epoch boundary

    resumed = worker.run_training(tmp_path, resume=True, num_workers=1)  # another worker count, same samples
    assert sorted(resumed) == list(range(start + 1, TOTAL + 1))
    mismatches = {i: (resumed[i], ref_losses[i]) for i in resumed if abs(resumed[i] - ref_losses[i]) > 1e-7}
    assert not mismatches
    assert [resumed[i] for i in resumed] == [ref_losses[i] for i in resumed]  # in fact bit-identical


def test_resume_from_every_checkpoint(reference, tmp_path):
    ref_losses, checkpoint_dir = reference
    checkpoints = find_checkpoints(checkpoint_dir)
    iterations = [int(p.stem.split("_")[1]) for p in checkpoints]
    assert iterations == [3, 5, 6, 9, 10, 12, 15]  # every 3 iterations plus epoch ends
    for path, start in zip(checkpoints[:-1], iterations[:-1]):
        resumed = worker.run_training(tmp_path / path.stem, resume=str(path))
        assert sorted(resumed) == list(range(start + 1, TOTAL + 1)), path.name
        assert [resumed[i] for i in resumed] == [ref_losses[i] for i in resumed], path.name


# ------------------------------------------------------------------------------------------------ data pipeline
def _dataset(**kwargs) -> PretrainingDataset:
    records = [{"image": np.full(4, float(i), dtype=np.float32), "id": i} for i in range(10)]
    transform = Compose([RandGaussianNoised(keys="image", prob=1.0, std=1.0)])
    return PretrainingDataset(records, transform, **kwargs)


def test_samples_are_a_function_of_seed_epoch_index():
    dataset = _dataset(seed=5)
    forward = [dataset[EpochIndex(i, 2)]["image"] for i in range(10)]
    backward = [dataset[EpochIndex(i, 2)]["image"] for i in reversed(range(10))][::-1]
    assert all(np.array_equal(a, b) for a, b in zip(forward, backward))
    dataset.set_epoch(2)
    assert np.array_equal(dataset[3]["image"], forward[3])  # plain ints use set_epoch
    assert not np.array_equal(dataset[EpochIndex(3, 3)]["image"], forward[3])
    assert not np.array_equal(_dataset(seed=6)[EpochIndex(3, 2)]["image"], forward[3])
    state = (np.random.get_state()[1].copy(), torch.get_rng_state().clone())
    dataset[EpochIndex(0, 0)]
    assert np.array_equal(np.random.get_state()[1], state[0]) and torch.equal(torch.get_rng_state(), state[1])


def test_samples_do_not_depend_on_worker_count():
    dataset = _dataset(seed=1)
    sampler = ResumableSampler(len(dataset), seed=2, rank=0, world_size=1)
    sampler.set_epoch(4)
    batches = []
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=3, sampler=sampler, num_workers=workers, collate_fn=pretraining_collate
        )
        batches.append(torch.cat([b["image"] for b in loader]))
    assert torch.equal(batches[0], batches[1])


def test_cache_gives_the_same_samples():
    cached, plain = _dataset(seed=3, cache=True), _dataset(seed=3)
    for i in range(10):
        assert np.array_equal(cached[EpochIndex(i, 1)]["image"], plain[EpochIndex(i, 1)]["image"])


class _Reader:
    def __call__(self, record: dict) -> dict:
        if record["id"] in (2, 3):
            raise DataContractError(record["image"], "not a NIfTI file (bad magic number)")
        if record["id"] == 5:
            raise OSError(f"[Errno 5] Input/output error: '{record['image']}'")
        return {"image": torch.full((2,), float(record["id"]))}


def _bad_records() -> list[dict]:
    return [{"image": f"/data/ct/case{i:02d}.nii.gz", "id": i} for i in range(8)]


def test_bad_record_raises_with_path_and_index():
    dataset = PretrainingDataset(_bad_records(), _Reader())
    with pytest.raises(DataContractError, match=r"case02\.nii\.gz.*record 2.*bad magic number"):
        dataset[2]
    with pytest.raises(DataContractError, match=r"case05\.nii\.gz.*record 5.*Input/output error"):
        dataset[5]
    assert dataset[1]["image"][0] == 1


def test_bad_records_are_skipped_and_reported(caplog):
    dataset = PretrainingDataset(_bad_records(), _Reader(), on_bad_sample="skip")
    with caplog.at_level("WARNING", logger="common.data.dataset"):
        samples = [dataset[i] for i in range(8)]
    assert [int(s["image"][0]) for s in samples] == [0, 1, 4, 4, 4, 6, 6, 7]
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "case02.nii.gz" in warned and "bad magic number" in warned and "case05.nii.gz" in warned
    batch = pretraining_collate(samples[:4])
    assert sorted(batch[SKIPPED_KEY]) == [2, 3, 3]  # index 2 skipped records 2 and 3, index 3 skipped record 3
    assert batch["image"].shape == (4, 2)
    assert SKIPPED_KEY not in pretraining_collate(samples[6:])
    all_bad = PretrainingDataset(_bad_records(), _Reader(), on_bad_sample="skip", max_consecutive_bad=2)
    with pytest.raises(DataContractError, match="unreadable"):
        all_bad[2]


def test_programming_errors_are_not_swallowed():
    def broken(record):
        raise TypeError("bug in a transform")

    with pytest.raises(Exception) as info:
        PretrainingDataset(_bad_records(), broken, on_bad_sample="skip")[0]
    chain, error = [], info.value
    while error is not None:
        chain.append(error)
        error = error.__cause__
    assert any(isinstance(e, TypeError) and "bug in a transform" in str(e) for e in chain)


def test_sampler_is_pure_sharded_and_resumable():
    samplers = [ResumableSampler(10, seed=4, rank=r, world_size=3) for r in range(3)]
    for s in samplers:
        s.set_epoch(7)
    shards = [list(s) for s in samplers]
    assert all(len(shard) == len(s) == 4 for shard, s in zip(shards, samplers))
    assert set().union(*map(set, shards)) == set(range(10))  # padded to 12, every record seen
    assert all(isinstance(i, EpochIndex) and i.epoch == 7 for i in shards[0])
    again = ResumableSampler(10, seed=4, rank=1, world_size=3)
    again.set_epoch(7)
    assert list(again) == shards[1]
    again.set_offset(3)
    assert list(again) == shards[1][3:]
    assert list(again) == shards[1]  # the offset is consumed once
    again.set_epoch(8)
    assert list(again) != shards[1]
    long = ResumableSampler(4, seed=0, rank=0, world_size=1, num_samples=10)
    assert len(list(long)) == 10 and sorted(list(long)[:4]) == [0, 1, 2, 3]
    assert pickle.loads(pickle.dumps(EpochIndex(3, 9))).epoch == 9
    with pytest.raises(ValueError):
        ResumableSampler(10, rank=3, world_size=3)
    with pytest.raises(ValueError):
        ResumableSampler(0)


def test_sample_seed_is_stable():
    assert sample_seed(0, 1, 2) == sample_seed(0, 1, 2)
    assert len({sample_seed(0, e, i) for e in range(5) for i in range(50)}) == 250


# -------------------------------------------------------------------------------------------- two ranks (gloo)
def _rank_main(rank: int, port: int, out_dir: str, resume: str | bool, queue) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        from common import distributed

        distributed.init_distributed("gloo")
        losses = worker.run_training(out_dir, resume=resume, keep_last=None, save_every=2)
        distributed.destroy_distributed()
        queue.put((rank, losses))
    except BaseException as err:  # report instead of hanging the parent
        queue.put((rank, repr(err)))


def _run_two_ranks(out_dir: Path, resume: str | bool = False) -> list[dict[int, float]]:
    import multiprocessing
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = multiprocessing.get_context("fork")  # inherit the imported modules: no re-import per rank
    queue = context.Queue()
    procs = [context.Process(target=_rank_main, args=(r, port, str(out_dir), resume, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=240) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    for rank, result in results.items():
        assert isinstance(result, dict), f"rank {rank} failed: {result}"
    return [results[0], results[1]]


@pytest.mark.skipif(sys.platform != "linux", reason="uses fork to start two CPU ranks quickly")
def test_two_rank_resume_restores_each_ranks_generators(tmp_path):
    reference = _run_two_ranks(tmp_path / "reference")
    epoch_length = -(-worker.NUM_RECORDS // 2 // worker.BATCH_SIZE)  # ceil(10 / 4) = 3
    total = worker.MAX_EPOCHS * epoch_length
    assert all(sorted(r) == list(range(1, total + 1)) for r in reference)
    assert reference[0] == reference[1]  # logged terms are averaged over the ranks
    checkpoints = {int(p.stem[-8:]): p for p in find_checkpoints(tmp_path / "reference" / "checkpoints")}
    assert sorted(checkpoints) == [2, 3, 4, 6, 8, 9]  # every 2 iterations and at epoch ends
    start = 4  # one iteration into epoch 2; the resumed run crosses the 6 -> 7 epoch boundary
    state = torch.load(checkpoints[start], weights_only=True)
    ranks = state["generators"]["ranks"]
    assert state["generators"]["world_size"] == 2 and len(ranks) == 2
    assert not torch.equal(ranks[0]["rng"]["torch"], ranks[1]["rng"]["torch"])
    resumed = _run_two_ranks(tmp_path / "resumed", resume=str(checkpoints[start]))
    for rank in range(2):  # each rank restored its own generators: same means as the uninterrupted run
        assert sorted(resumed[rank]) == list(range(start + 1, total + 1))
        assert [resumed[rank][i] for i in resumed[rank]] == [reference[rank][i] for i in resumed[rank]]
