import torch

from cnnlab.data.augment import augment, cutout, random_crop, random_flip
from cnnlab.data.loader import TensorBatches


def batches(world: int, rank: int, epoch: int, n: int = 103, bs: int = 10, shuffle: bool = True):
    x = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1)
    return list(TensorBatches(x, torch.arange(n), bs, shuffle=shuffle, seed=1, epoch=lambda: epoch,
                              rank=rank, world_size=world))


def test_ddp_shards_are_disjoint_equal_and_reshuffled_per_epoch():
    r0, r1 = (torch.cat([y for _, y in batches(2, r, 0)]) for r in (0, 1))
    assert len(r0) == len(r1) == 51 and not set(r0.tolist()) & set(r1.tolist())
    assert len(batches(2, 0, 0)) == len(TensorBatches(torch.zeros(103, 1, 1, 1), torch.zeros(103), 10,
                                                       shuffle=True, world_size=2)) == 6
    again = torch.cat([y for _, y in batches(2, 0, 0)])
    other_epoch = torch.cat([y for _, y in batches(2, 0, 1)])
    assert torch.equal(r0, again) and not torch.equal(r0, other_epoch)


def test_eval_batches_cover_every_sample_once_across_ranks():
    seen = torch.cat([y for r in (0, 1) for _, y in batches(2, r, 0, shuffle=False)])
    assert sorted(seen.tolist()) == list(range(103))


def test_images_follow_labels():
    for x, y in batches(1, 0, 3):
        assert torch.equal(x.view(-1).long(), y)


def test_augmentations_keep_shape_and_content():
    x = torch.rand(16, 3, 8, 8)
    assert torch.equal(random_crop(x, 0), x)
    assert random_crop(x, 2).shape == x.shape
    shifted = random_crop(torch.ones(4, 1, 8, 8), 3)
    assert torch.equal(shifted, torch.ones(4, 1, 8, 8))  # reflect padding never brings in zeros
    flipped = random_flip(x)
    assert all(torch.equal(f, o) or torch.equal(f, o.flip(2)) for f, o in zip(flipped, x))
    holes = cutout(torch.ones(32, 1, 8, 8), 4)
    assert holes.shape == (32, 1, 8, 8) and (holes == 0).any()
    assert (holes.view(32, -1) == 0).sum(1).max() <= 16
    assert augment(x, 2, True, 3).shape == x.shape
