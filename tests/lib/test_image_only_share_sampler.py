"""ImageOnlyShareSampler: the ``image_only_share`` knob fixes how many rows of every batch are image-only (issue 26)."""

from __future__ import annotations

import pytest

from common.data.contract import DataContractError
from common.data.mixing import ImageOnlyShareSampler

RECORDS = [{"image": f"{i}.nii.gz", **({"report": f"report {i}."} if i % 3 else {})} for i in range(30)]
PAIRED = {i for i, r in enumerate(RECORDS) if "report" in r}


def _batches(sampler: ImageOnlyShareSampler) -> list[list[int]]:
    order = [int(i) for i in sampler]
    return [order[k : k + sampler.batch_size] for k in range(0, len(order), sampler.batch_size)]


def test_share_zero_draws_each_paired_record_once_per_epoch() -> None:
    sampler = ImageOnlyShareSampler(RECORDS, batch_size=4, image_only_share=0.0, seed=1)
    order = [int(i) for i in sampler]
    assert len(order) == len(sampler) == 20 and set(order) == PAIRED  # 20 paired records, 5 batches of 4


@pytest.mark.parametrize("world_size", [1, 2])
def test_every_batch_of_every_rank_holds_the_share(world_size: int) -> None:
    samplers = [
        ImageOnlyShareSampler(RECORDS, 4, image_only_share=0.25, seed=3, rank=r, world_size=world_size)
        for r in range(world_size)
    ]
    seen = []
    for sampler in samplers:
        for batch in _batches(sampler):
            assert batch[0] not in PAIRED and set(batch[1:]) <= PAIRED
            seen += batch[1:]
    assert len(seen) == len(set(seen)) == 20 // (3 * world_size) * 3 * world_size  # paired: once per epoch


def test_order_is_a_function_of_seed_and_epoch_and_resumes_at_an_offset() -> None:
    a, b = (ImageOnlyShareSampler(RECORDS, 4, image_only_share=0.5, seed=7) for _ in range(2))
    first = [int(i) for i in a]
    assert first == [int(i) for i in b]
    a.set_epoch(1)
    assert [int(i) for i in a] != first
    b.set_offset(8)
    assert [int(i) for i in b] == first[8:]


def test_image_only_share_one_and_missing_kinds() -> None:
    only_images = ImageOnlyShareSampler(RECORDS, 5, image_only_share=1.0)
    assert len(only_images) == 10 and not {int(i) for i in only_images} & PAIRED
    paired_only = [r for r in RECORDS if "report" in r]
    assert len(ImageOnlyShareSampler(paired_only, 4, image_only_share=0.5)) == 20  # no image-only: paired batches
    with pytest.raises(DataContractError, match="cannot fill one batch"):
        ImageOnlyShareSampler([r for r in RECORDS if "report" not in r], 4, image_only_share=0.5)
    with pytest.raises(ValueError, match="image_only_share"):
        ImageOnlyShareSampler(RECORDS, 4, image_only_share=1.5)
