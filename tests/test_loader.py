"""data_prep.loader: sample index, epoch order and sharding, torch and DALI loaders, resume."""

from __future__ import annotations

import csv
import sys

import h5py
import numpy as np
import pytest
import torch

from tests.conftest import make_tiny_dataset, state_keys
from wxscale.data_prep.layout import FIELDS_KEY, load_meta, read_stats
from wxscale.data_prep.loader import EpochSampler, SampleIndex, build_loader
from wxscale.errors import WxscaleError

try:
    import nvidia.dali  # noqa: F401

    HAVE_DALI = True
except ImportError:
    HAVE_DALI = False

KINDS = ["torch", pytest.param("dali", marks=pytest.mark.skipif(not HAVE_DALI, reason="DALI not installed"))]


def collect(loader, n: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Up to n batches of the loader's current epoch (all when n is None)."""
    out = []
    for x, y in loader:
        out.append((x.clone(), y.clone()))
        if n is not None and len(out) == n:
            break
    return out


def assert_same_batches(a, b) -> None:
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


# ------------------------------------------------------------------------------------------------------------
# index and sampler


@pytest.mark.parametrize("k", [1, 2, 3])
def test_samples_never_cross_gaps_or_shards(tiny_dataset, k):
    meta = load_meta(tiny_dataset)
    index = SampleIndex(tiny_dataset, "train", k)
    times = index.times(np.arange(len(index)))
    assert np.all(np.diff(times, axis=1) == meta.dhours)
    # Train: 2 shards of 48 steps, a step missing before step 30 of the first: k starts lost at the gap.
    assert len(index) == (48 - k) + (48 - k) - k
    assert set(np.unique(index.shard_of)) == {0, 1}
    for shard in (0, 1):
        starts = index.start_of[index.shard_of == shard]
        assert starts.max() + k < meta.shards_of("train")[shard].n_steps


def test_sampler_one_rank_equals_two_ranks_of_half_the_batch():
    one = EpochSampler(103, 8, seed=5)
    two = [EpochSampler(103, 4, world_size=2, rank=r, seed=5) for r in range(2)]
    assert len(one) == len(two[0]) == len(two[1]) == 103 // 8
    for epoch in (0, 1):
        for s in range(len(one)):
            np.testing.assert_array_equal(one.batch(epoch, s), np.concatenate([t.batch(epoch, s) for t in two]))


@pytest.mark.parametrize("world_size", [2, 3])
def test_sampler_ranks_disjoint_and_cover(world_size):
    n, b = 101, 4
    g = b * world_size
    ranks = [EpochSampler(n, b, world_size=world_size, rank=r, seed=1) for r in range(world_size)]
    seen = np.concatenate([np.concatenate(s.batches(0)) for s in ranks])
    assert len(seen) == len(set(seen.tolist())) == (n // g) * g  # drop_last: the tail is dropped
    np.testing.assert_array_equal(np.sort(seen), np.sort(ranks[0].perm(0)[: (n // g) * g]))
    # drop_last=False: every sample exactly once; the tail split as evenly as possible
    ranks = [EpochSampler(n, b, world_size=world_size, rank=r, seed=1, drop_last=False) for r in range(world_size)]
    seen = np.concatenate([np.concatenate(s.batches(0)) for s in ranks])
    np.testing.assert_array_equal(np.sort(seen), np.arange(n))
    tails = [len(s.batch(0, len(s) - 1)) for s in ranks]
    assert max(tails) - min(tails) <= 1 and sum(tails) == n - (n // g) * g


def test_sampler_order_seeded_per_epoch():
    a, b = EpochSampler(50, 5, seed=0), EpochSampler(50, 5, seed=0)
    np.testing.assert_array_equal(a.perm(3), b.perm(3))
    assert not np.array_equal(a.perm(0), a.perm(1))
    assert not np.array_equal(a.perm(0), EpochSampler(50, 5, seed=1).perm(0))
    np.testing.assert_array_equal(EpochSampler(50, 5, shuffle=False).perm(7), np.arange(50))


# ------------------------------------------------------------------------------------------------------------
# what the loaders hand out


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("k", [1, 2])
def test_batches_are_normalised_states_from_the_files(tiny_dataset, kind, k):
    loader = build_loader(tiny_dataset, "train", batch_size=8, rollout_steps=k, kind=kind, num_workers=1, shuffle=False)
    stats = read_stats(tiny_dataset)
    meta = load_meta(tiny_dataset)
    with h5py.File(tiny_dataset / meta.shards_of("train")[0].path) as f:
        fields = f[FIELDS_KEY][:].astype(np.float64)
    x, y = next(iter(loader))
    assert x.dtype == y.dtype == torch.float32
    assert x.shape == (8, 3, 8, 16) and y.shape == (8, k, 3, 8, 16)
    norm = (fields - stats.mean[:, None, None]) / stats.std[:, None, None]
    # float32 rounding of the data and of the mean, seen through 1/std
    atol = 8 * np.finfo(np.float32).eps * np.abs(fields).max() / stats.std.min()
    # shuffle=False: the first batch is shard 0, t = 0..7
    np.testing.assert_allclose(x.numpy(), norm[:8], rtol=0, atol=atol)
    for j in range(k):
        np.testing.assert_allclose(y[:, j].numpy(), norm[1 + j : 9 + j], rtol=0, atol=atol)
    assert abs(float(x.mean())) < 1.5 and 0.3 < float(x.std()) < 3  # normalised, not raw


@pytest.mark.parametrize("kind", KINDS)
def test_loaded_samples_respect_gaps(tiny_dataset, kind):
    loader = build_loader(tiny_dataset, "train", batch_size=8, rollout_steps=2, kind=kind, num_workers=2)
    index = SampleIndex(tiny_dataset, "train", 2)
    for x, y in loader:
        keys = state_keys(tiny_dataset, "train", x)
        assert state_keys(tiny_dataset, "train", y[:, 0]) == [(s, t + 1) for s, t in keys]
        assert state_keys(tiny_dataset, "train", y[:, 1]) == [(s, t + 2) for s, t in keys]
        for s, t in keys:
            times = index.shard_times[s][t : t + 3]
            assert np.all(np.diff(times) == 6), f"sample at shard {s}, t {t} crosses a gap: {times}"


@pytest.mark.skipif(not HAVE_DALI, reason="DALI not installed")
@pytest.mark.parametrize("k", [1, 2])
def test_dali_and_torch_give_identical_batches(tiny_dataset, k):
    kw = dict(batch_size=8, rollout_steps=k, seed=3, num_workers=2)
    t = build_loader(tiny_dataset, "train", kind="torch", **kw)
    d = build_loader(tiny_dataset, "train", kind="dali", **kw)
    for _ in range(2):  # two epochs: also the epoch change must agree
        assert_same_batches(collect(t), collect(d))
    # Validation-style: no drop_last, rank 1 of 2, where the last batch is short (DALI pads it, then trims).
    kw.update(drop_last=False, shuffle=False, world_size=2, rank=1, batch_size=4)
    t = build_loader(tiny_dataset, "valid", kind="torch", **kw)
    d = build_loader(tiny_dataset, "valid", kind="dali", **kw)
    bt, bd = collect(t), collect(d)
    assert len(bt[-1][0]) == 3  # valid: 31 samples = 3 global batches of 8, then 4 + 3
    assert_same_batches(bt, bd)


@pytest.mark.parametrize("kind", KINDS)
def test_position_advances_over_epochs(tiny_dataset, kind):
    loader = build_loader(tiny_dataset, "train", batch_size=16, kind=kind, num_workers=1)
    assert len(loader) == loader.n_samples // 16
    assert loader.state_dict()["epoch"] == 0 and loader.state_dict()["batch"] == 0
    e0 = collect(loader)
    assert len(e0) == len(loader)
    assert (loader.state_dict()["epoch"], loader.state_dict()["batch"]) == (1, 0)
    e1 = collect(loader)
    assert (loader.state_dict()["epoch"], loader.state_dict()["batch"]) == (2, 0)
    assert not torch.equal(e0[0][0], e1[0][0])  # a fresh shuffle each epoch
    keys0 = sorted(k for x, _ in e0 for k in state_keys(tiny_dataset, "train", x))
    assert len(keys0) == len(set(keys0)) == len(loader) * 16  # no sample twice within an epoch


@pytest.mark.parametrize("kind", KINDS)
def test_resume_mid_epoch_continues_the_same_sequence(tiny_dataset, kind):
    kw = dict(batch_size=8, rollout_steps=1, seed=11, kind=kind, num_workers=2)
    ref = build_loader(tiny_dataset, "train", **kw)
    reference = collect(ref) + collect(ref)  # epochs 0 and 1
    n = len(ref)

    first = build_loader(tiny_dataset, "train", **kw)
    head = collect(first, 5)
    state = first.state_dict()
    assert (state["epoch"], state["batch"]) == (0, 5)
    # Same object, iterated again: continues where it stopped.
    rest_same = collect(first) + collect(first)
    assert_same_batches(head + rest_same, reference)
    # A fresh loader (as after a restart) from the saved state.
    resumed = build_loader(tiny_dataset, "train", **kw)
    resumed.load_state_dict(state)
    assert_same_batches(collect(resumed) + collect(resumed), reference[5:])
    # Resume at an epoch boundary and deep into a later epoch.
    resumed.load_state_dict({**state, "epoch": 1, "batch": n - 2})
    assert_same_batches(collect(resumed), reference[-2:])


def test_world_size_two_in_one_process_disjoint(tiny_dataset):
    kw = dict(batch_size=4, world_size=2, seed=2, kind="torch", num_workers=0)
    seen = []
    for r in range(2):
        loader = build_loader(tiny_dataset, "train", rank=r, **kw)
        seen.append({k for x, _ in loader for k in state_keys(tiny_dataset, "train", x)})
    n = SampleIndex(tiny_dataset, "train", 1).__len__()
    assert not seen[0] & seen[1]
    assert len(seen[0]) == len(seen[1]) == (n // 8) * 4


# ------------------------------------------------------------------------------------------------------------
# errors


def test_bad_requests_raise_clear_errors(tiny_dataset, tmp_path):
    with pytest.raises(WxscaleError, match="fewer than one global batch"):
        build_loader(tiny_dataset, "valid", batch_size=64, kind="torch")
    with pytest.raises(WxscaleError, match="split 'nope'"):
        build_loader(tiny_dataset, "nope", kind="torch")
    with pytest.raises(WxscaleError, match="--loader 'jax'"):
        build_loader(tiny_dataset, "train", kind="jax")
    with pytest.raises(WxscaleError, match="does not exist"):
        build_loader(tmp_path / "missing", "train")
    loader = build_loader(tiny_dataset, "train", batch_size=8, seed=0, kind="torch", num_workers=0)
    with pytest.raises(WxscaleError, match="seed"):
        loader.load_state_dict({**loader.state_dict(), "seed": 1})


def test_dali_missing_names_the_package(tiny_dataset, monkeypatch):
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # makes `import nvidia.dali` raise ImportError
    with pytest.raises(WxscaleError, match="nvidia-dali-cuda130.*--loader torch"):
        build_loader(tiny_dataset, "train", kind="dali")


def test_make_tiny_dataset_options(tmp_path):
    d = make_tiny_dataset(tmp_path / "d", grid=(4, 8), channels=("a", "b"), n_steps=60, gaps=(5, 40), seed=3)
    meta = load_meta(d)
    assert meta.grid == (4, 8) and meta.channels == ["a", "b"] and len(meta.gaps) == 2
    assert [s.split for s in meta.shards] == ["train", "train", "valid", "test"]
    assert sum(s.n_steps for s in meta.shards) == 60


def test_loader_bench_writes_csv_and_png(tiny_dataset, tmp_path):
    from wxscale import cli

    out = tmp_path / "bench"
    loaders = "plain,plain_block,torch" + (",dali" if HAVE_DALI else "")
    argv = ["bench", "loader", str(tiny_dataset), "--out", str(out), "--epochs", "1", "--batch-size", "8"]
    assert cli.main([*argv, "--loaders", loaders, "--num-workers", "1"]) == 0
    rows = list(csv.DictReader((out / "loader_bench.csv").open()))
    assert [r["loader"] for r in rows] == loaders.split(",")
    assert all(float(r["samples_per_s"]) > 0 and float(r["mb_per_s"]) > 0 for r in rows)
    assert float(rows[0]["ratio_to_plain"]) == 1.0
    assert (out / "loader_bench.png").stat().st_size > 0
    assert cli.main([*argv, "--loaders", "plain,nope"]) == 2
