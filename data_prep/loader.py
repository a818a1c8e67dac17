"""Readers of the dataset dir: a DALI pipeline and a torch DataLoader that give the same batches.

A sample (ARCHITECTURE.md, "Dataset dir") is the normalised state at time t and the normalised states at
t + k*dhours for k = 1..K (K = rollout steps), all from one shard and never across a gap in time::

    x: [C, H, W]        y: [K, C, H, W]        both float32, (field - mean) / std with stats.h5's mean and std

Sample ids index the concatenation, over the split's shards in data.json order, of each shard's valid starts
(:func:`data_prep.layout.valid_sample_starts`).

Order and sharding (:class:`EpochSampler`). Epoch e uses the permutation
``np.random.default_rng((seed, e))`` of the sample ids (identity when shuffle=False). With
G = batch_size * world_size (the global batch), step s of the epoch takes perm[s*G:(s+1)*G] and rank r its
contiguous slice [r*b:(r+1)*b]. So one rank with batch G and two ranks with batch G/2 see the same global
batches, which makes data-parallel training equivalent to one process. With drop_last (training) the tail that
cannot fill a global batch is dropped. Without it (validation) every sample is seen exactly once across the
ranks, and every rank still gets the same number of batches, ceil(n / G), whatever n and the number of ranks:
a rank with fewer batches than the others would leave them waiting in a collective (the known hang of a DALI
ERA5 pipeline over shards whose sample count the ranks do not divide). The tail is split as evenly as possible
into contiguous slices, one last batch per rank; when it is shorter than the number of ranks, the last full
global batch joins it and the two are split into two last batches per rank instead. Last batches may be
smaller than the others. Only where no split can give every rank a sample in each batch (batch 1 per rank,
or fewer samples than ranks) is a rank's last batch empty (0 samples, tensors of shape [0, ...]); the torch
loader hands it out, the DALI loader too (without running its pipeline, which refuses empty batches).

Position. ``for x, y in loader`` runs one epoch from the current position; the position (epoch, batch) names
the next batch to read and is updated as each batch is handed out, so ``loader.state_dict()`` taken after a
training step resumes at the following batch (``load_state_dict``), mid-epoch included.

Reading. Both loaders read a batch per call in worker processes (torch DataLoader workers; DALI parallel
external-source workers, each call a whole batch), one h5py call per sample (t..t+K are consecutive steps, one
chunk each), opening the shards lazily in each process (a handle must not cross a fork).

Normalisation. Both normalise in float32 as (x - mean) * (1 / std), 1 / std rounded to float32 once: in numpy
for torch, with DALI's `fn.normalize` inside the DALI pipeline, which computes exactly that; the two are the
same IEEE float32 operations, so on CPU their outputs are bitwise equal (tests/test_loader.py checks). (DALI's
generic arithmetic, `(x - mean) / std` on broadcast constants, gives true division but ran at a quarter of the speed
on CPU, below the plain-read rate this loader must keep; the reciprocal differs from true division by at most
1 ulp.)
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any

import h5py
import numpy as np

import wxscale.errors
from wxscale.data_prep.layout import (
    FIELDS_KEY,
    H5_READ_ERRORS,
    DatasetMeta,
    Stats,
    load_meta,
    read_shard_time,
    read_stats,
    unreadable,
    valid_sample_starts,
)
from wxscale.errors import WxscaleError

KINDS = ("torch", "dali")
DALI_INSTALL_HINT = "install `nvidia-dali-cuda130` (pip install nvidia-dali-cuda130) or use `--loader torch`"


# ------------------------------------------------------------------------------------------------------------
# which samples exist, and in which order each rank reads them


class SampleIndex:
    """The samples of one split: sample id -> (shard, time index of its first state).

    Built from each shard's `time` dataset, so a sample never crosses a gap or a shard boundary.
    """

    def __init__(
        self,
        dataset_dir: str | os.PathLike,
        split: str,
        rollout_steps: int = 1,
        meta: DatasetMeta | None = None,
    ):
        if rollout_steps < 1:
            raise WxscaleError(f"rollout_steps must be >= 1, got {rollout_steps}")
        self.dataset_dir = Path(dataset_dir)
        self.meta = meta if meta is not None else load_meta(dataset_dir)
        self.split = split
        self.rollout_steps = int(rollout_steps)
        shards = self.meta.shards_of(split)
        if not shards:
            have = sorted({s.split for s in self.meta.shards})
            raise WxscaleError(f"{self.dataset_dir}: no shards for split {split!r} (data.json has {have})")
        listed, promised = sum(s.n_steps for s in shards), self.meta.splits.get(split, {}).get("n_steps")
        if promised is not None and listed != promised:  # a shard dropped from the list shrinks the split
            raise WxscaleError(
                f"{self.dataset_dir}/data.json: split {split!r} promises {promised} steps but its shards list "
                f"{listed}; run `wxscale check {self.dataset_dir}` and rewrite it with `wxscale prep --overwrite`"
            )
        self.shard_paths: list[Path] = [self.dataset_dir / s.path for s in shards]
        self.shard_times: list[np.ndarray] = []
        shard_of, start_of = [], []
        for i, (path, info) in enumerate(zip(self.shard_paths, shards, strict=True)):
            if not path.is_file():
                raise WxscaleError(f"shard {path} listed in data.json is missing; run `wxscale check` on the dir")
            times = read_shard_time(path)
            if len(times) != info.n_steps:  # a shorter shard would quietly shrink the split
                raise WxscaleError(
                    f"shard {path} holds {len(times)} time steps but data.json promises {info.n_steps}; run "
                    f"`wxscale check {self.dataset_dir}` and rewrite the dataset with `wxscale prep --overwrite`"
                )
            self.shard_times.append(times)
            starts = valid_sample_starts(times, self.meta.dhours, self.rollout_steps)
            shard_of.append(np.full(len(starts), i, dtype=np.int64))
            start_of.append(starts)
        self.shard_of = np.concatenate(shard_of)
        self.start_of = np.concatenate(start_of)

    def keep_subset(self, n: int, seed: int = 0) -> None:
        """Keep n samples: the first n of a permutation seeded by ``seed`` alone (not the run's seed), in id
        order, so every run asking for n gets the same samples and a smaller subset lies inside a larger one."""
        if not 1 <= n <= len(self):
            raise WxscaleError(f"data.train_samples={n}: split {self.split!r} of {self.dataset_dir} holds "
                               f"{len(self)} samples (rollout {self.rollout_steps}); ask for at most that many")
        keep = np.sort(np.random.default_rng(seed).permutation(len(self))[:n])
        self.shard_of, self.start_of = self.shard_of[keep], self.start_of[keep]

    def __len__(self) -> int:
        return len(self.shard_of)

    def locate(self, sample_id: int) -> tuple[int, int]:
        """(shard number within the split, time index of the sample's first state)."""
        return int(self.shard_of[sample_id]), int(self.start_of[sample_id])

    def times(self, sample_ids: np.ndarray) -> np.ndarray:
        """Hours since 1970 of each sample's states: [n, K + 1] (column 0 is the input's time)."""
        sample_ids = np.asarray(sample_ids, dtype=np.int64)
        out = np.empty((len(sample_ids), self.rollout_steps + 1), dtype=np.int64)
        for j, i in enumerate(sample_ids):
            shard, t = self.locate(i)
            out[j] = self.shard_times[shard][t : t + self.rollout_steps + 1]
        return out


class EpochSampler:
    """Seeded per-epoch order of sample ids, cut into global batches and sharded across ranks (module doc)."""

    def __init__(
        self,
        n_samples: int,
        batch_size: int,
        *,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
    ):
        if batch_size < 1:
            raise WxscaleError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise WxscaleError(f"rank {rank} is not in 0..world_size-1 (world_size {world_size})")
        self.n_samples, self.batch_size = int(n_samples), int(batch_size)
        self.world_size, self.rank, self.seed = int(world_size), int(rank), int(seed)
        self.shuffle, self.drop_last = bool(shuffle), bool(drop_last)
        self.global_batch = self.batch_size * self.world_size
        self.n_full = self.n_samples // self.global_batch
        self._last = self._balanced_last_batches()  # [(start, length)] of this rank's last batches
        self._perm_cache: tuple[int, np.ndarray] | None = None

    def _balanced_last_batches(self) -> list[tuple[int, int]]:
        """Without drop_last: where in the epoch's order this rank's last batches lie, so that every rank has
        the same number of batches and every sample is read once (module doc). Empty with drop_last."""
        tail = self.n_samples - self.n_full * self.global_batch
        if self.drop_last or tail == 0:
            return []
        # With a tail shorter than the ranks, some rank would get no tail sample and one batch fewer: merge
        # the last full global batch into the tail and cut two last batches per rank from the merged part.
        n_last = 2 if tail < self.world_size and self.n_full > 0 else 1
        start = (self.n_full + 1 - n_last) * self.global_batch
        q, rem = divmod(self.n_samples - start, self.world_size)
        mine = q + (self.rank < rem)  # contiguous share of this rank: q or q + 1 samples
        lo = start + self.rank * q + min(self.rank, rem)
        sizes = [len(a) for a in np.array_split(np.arange(mine), n_last)]  # <= batch_size (see module doc)
        offsets = np.cumsum([0, *sizes])
        return [(lo + int(o), int(n)) for o, n in zip(offsets, sizes, strict=False)]

    @property
    def n_regular(self) -> int:
        """Batches that are slices of a full global batch (the rest are this rank's balanced last batches)."""
        return self.n_full - (len(self._last) == 2)

    @property
    def n_nonempty(self) -> int:
        """Batches with at least one sample: all of them except an empty last one (module doc)."""
        return self.n_regular + sum(1 for _, n in self._last if n > 0)

    def __len__(self) -> int:
        """Batches per epoch for this rank: the same on every rank."""
        return self.n_regular + len(self._last)

    def perm(self, epoch: int) -> np.ndarray:
        if self._perm_cache is not None and self._perm_cache[0] == epoch:
            return self._perm_cache[1]
        if self.shuffle:
            p = np.random.default_rng((self.seed, int(epoch))).permutation(self.n_samples)
        else:
            p = np.arange(self.n_samples)
        self._perm_cache = (int(epoch), p)
        return p

    def batch(self, epoch: int, index: int) -> np.ndarray:
        """Sample ids of this rank's batch `index` in `epoch`."""
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range 0..{len(self) - 1}")
        p = self.perm(epoch)
        if index < self.n_regular:
            lo = index * self.global_batch + self.rank * self.batch_size
            return p[lo : lo + self.batch_size]
        lo, n = self._last[index - self.n_regular]
        return p[lo : lo + n]

    def batches(self, epoch: int, start: int = 0) -> list[np.ndarray]:
        return [self.batch(epoch, i) for i in range(start, len(self))]


# ------------------------------------------------------------------------------------------------------------
# reading one sample (shared by both loaders; pickled into worker processes, so it holds only plain data)


class SampleReader:
    """Reads and normalises samples; opens the shards lazily, once per process."""

    def __init__(self, index: SampleIndex, stats: Stats):
        self.paths = [str(p) for p in index.shard_paths]
        self.shard_of, self.start_of = index.shard_of, index.start_of
        self.k = index.rollout_steps
        self.grid = tuple(index.meta.grid)  # for the shape of an empty batch
        # float32 constants [C, 1, 1]: the same numbers the DALI pipeline uses (fn.normalize multiplies by
        # the float32 reciprocal of std, so we do too).
        self.mean = np.asarray(stats.mean, dtype=np.float32).reshape(-1, 1, 1)
        self.std = np.asarray(stats.std, dtype=np.float32).reshape(-1, 1, 1)
        self.inv_std = np.float32(1) / self.std
        self._files: dict[int, tuple[h5py.File, h5py.Dataset]] = {}
        self._pid = -1

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_files": {}, "_pid": -1}

    def _fields(self, shard: int) -> h5py.Dataset:
        if self._pid != os.getpid():  # a fresh process (fork or spawn): never reuse the parent's handles
            self._files, self._pid = {}, os.getpid()
        if shard not in self._files:
            f = h5py.File(self.paths[shard], "r")
            self._files[shard] = (f, f[FIELDS_KEY])
        return self._files[shard][1]

    def raw(self, sample_id: int) -> np.ndarray:
        """Un-normalised states t..t+K of one sample: [K + 1, C, H, W] float32 (one h5py read)."""
        shard, t = int(self.shard_of[sample_id]), int(self.start_of[sample_id])
        try:
            return self._fields(shard)[t : t + self.k + 1]
        except H5_READ_ERRORS as err:  # a chunk that cannot be decoded: name the shard, not h5py's internals
            raise unreadable(self.paths[shard], err) from err

    def read_batch(self, ids) -> tuple[np.ndarray, np.ndarray]:
        """Un-normalised batch: x [B, C, H, W] and y [B, K, C, H, W], float32, contiguous (B may be 0)."""
        if len(ids) == 0:  # a balanced last batch with no sample (EpochSampler, module doc)
            shape = (len(self.mean), *self.grid)
            return np.empty((0, *shape), np.float32), np.empty((0, self.k, *shape), np.float32)
        first = self.raw(ids[0])
        x = np.empty((len(ids), *first.shape[1:]), np.float32)
        y = np.empty((len(ids), self.k, *first.shape[1:]), np.float32)
        for j, i in enumerate(ids):
            a = first if j == 0 else self.raw(i)
            x[j], y[j] = a[0], a[1:]
        return x, y

    def normalise(self, a: np.ndarray) -> np.ndarray:
        """(a - mean) * (1 / std) in float32, in place; broadcasts over leading dims."""
        a -= self.mean
        a *= self.inv_std
        return a

    def close(self) -> None:
        if self._pid == os.getpid():
            for f, _ in self._files.values():
                f.close()
        self._files = {}


# ------------------------------------------------------------------------------------------------------------
# loaders


class _Loader:
    """Position bookkeeping shared by the torch and DALI loaders; subclasses implement `_batches`."""

    kind = ""

    def __init__(
        self,
        dataset_dir: str | os.PathLike,
        split: str,
        *,
        batch_size: int,
        rollout_steps: int,
        seed: int,
        rank: int,
        world_size: int,
        num_workers: int,
        shuffle: bool,
        drop_last: bool,
        device: Any,
        max_samples: int | None = None,
    ):
        self.dataset_dir = Path(dataset_dir)
        self.meta: DatasetMeta = load_meta(dataset_dir)
        self.stats: Stats = read_stats(dataset_dir)
        if len(self.stats.mean) != self.meta.n_channels:
            raise WxscaleError(
                f"{self.dataset_dir}/stats.h5 has {len(self.stats.mean)} channels but data.json "
                f"{self.meta.n_channels}; rewrite the dataset with `wxscale prep`"
            )
        self.index = SampleIndex(dataset_dir, split, rollout_steps, self.meta)
        if max_samples is not None:
            self.index.keep_subset(max_samples)
        self.split, self.rollout_steps = split, int(rollout_steps)
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.sampler = EpochSampler(
            len(self.index),
            batch_size,
            world_size=world_size,
            rank=rank,
            seed=seed,
            shuffle=shuffle,
            drop_last=drop_last,
        )
        if len(self.sampler) == 0 and drop_last:
            raise WxscaleError(
                f"split {split!r} of {self.dataset_dir} has {len(self.index)} samples "
                f"(rollout {rollout_steps}), "
                f"fewer than one global batch ({batch_size} x {world_size} ranks); lower the batch size"
            )
        self.reader = SampleReader(self.index, self.stats)
        self.device = device
        self.epoch, self.batch = 0, 0

    @property
    def n_samples(self) -> int:
        """Samples in the split (all ranks, before dropping a tail)."""
        return len(self.index)

    def __len__(self) -> int:
        return len(self.sampler)

    def state_dict(self) -> dict:
        s = self.sampler
        return {
            "epoch": self.epoch,
            "batch": self.batch,
            "seed": s.seed,
            "n_samples": s.n_samples,
            "global_batch": s.global_batch,
            "rank": s.rank,
            "world_size": s.world_size,
            "kind": self.kind,
        }

    def load_state_dict(self, d: dict) -> None:
        """Resume at (epoch, batch). The order must be the same: same seed, split size and global batch."""
        s = self.sampler
        for key, have in (("seed", s.seed), ("n_samples", s.n_samples), ("global_batch", s.global_batch)):
            if key in d and d[key] != have:
                raise WxscaleError(
                    f"loader state has {key}={d[key]} but this loader {have}: the saved position "
                    "belongs to another sample order; resume with the same seed, data and batch"
                )
        self.epoch, self.batch = int(d["epoch"]), int(d["batch"])

    def __iter__(self):
        n = len(self)
        if self.batch >= n:  # the very end of an epoch is the start of the next (or an empty epoch: n == 0)
            self.epoch, self.batch = self.epoch + 1, 0
            if n == 0:
                return
        epoch, start = self.epoch, self.batch
        for b, xy in enumerate(self._batches(epoch, start), start=start + 1):
            # Advance before handing the batch out: the position always names the next batch to read.
            self.epoch, self.batch = (epoch + 1, 0) if b >= n else (epoch, b)
            yield xy

    def _batches(self, epoch: int, start: int):
        raise NotImplementedError

    def close(self) -> None:
        """Stop worker processes and close files (the loader may be iterated again afterwards)."""
        self.reader.close()


# ----- torch


class _BatchDataset:
    """torch map-style dataset whose `__getitems__` returns a whole normalised batch (x, y) as numpy."""

    def __init__(self, reader: SampleReader, n: int):
        self.reader, self.n = reader, n

    def __len__(self) -> int:
        return self.n

    def __getitems__(self, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        x, y = self.reader.read_batch(ids)
        return self.reader.normalise(x), self.reader.normalise(y)

    def __getitem__(self, i: int):
        x, y = self.__getitems__([i])
        return x[0], y[0]


def _to_tensors(xy: tuple[np.ndarray, np.ndarray]):
    import torch

    return torch.from_numpy(xy[0]), torch.from_numpy(xy[1])


class _PositionedBatchSampler:
    """Yields this rank's batches from `position` on; the DataLoader calls iter() on it at each epoch.

    It holds the EpochSampler, not the loader: a reference cycle would keep a dropped loader, and its worker
    processes, alive until the garbage collector runs (and forked children would inherit them).
    """

    def __init__(self, sampler: EpochSampler):
        self.sampler = sampler
        self.position = (0, 0)  # (epoch, first batch), set by TorchLoader before each epoch

    def __iter__(self):
        epoch, start = self.position
        return iter([b.tolist() for b in self.sampler.batches(epoch, start)])

    def __len__(self) -> int:
        return len(self.sampler) - self.position[1]


class TorchLoader(_Loader):
    """torch DataLoader over :class:`SampleReader` with batches from :class:`EpochSampler`."""

    kind = "torch"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        import torch.utils.data

        self._batch_sampler = _PositionedBatchSampler(self.sampler)
        self._dl = torch.utils.data.DataLoader(
            _BatchDataset(self.reader, self.n_samples),
            batch_sampler=self._batch_sampler,
            num_workers=self.num_workers,
            collate_fn=_to_tensors,
            persistent_workers=self.num_workers > 0,
            prefetch_factor=4 if self.num_workers > 0 else None,
            pin_memory=False,
        )

    def close(self) -> None:
        it = getattr(self._dl, "_iterator", None)  # persistent workers live in the DataLoader's iterator
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self._dl._iterator = None
        super().close()

    def _batches(self, epoch: int, start: int):
        self._batch_sampler.position = (epoch, start)
        for x, y in _worker_errors_as_one_line(self._dl):
            if self.device is not None:
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            yield x, y


def _worker_errors_as_one_line(batches):
    """Worker processes' WxscaleErrors come back with the worker's traceback pasted into the message (torch
    re-raises the same type, DALI a plain Exception); raise the message the worker raised, so the command
    line still prints one line."""
    it = iter(batches)
    while True:
        try:
            xy = next(it)
        except StopIteration:
            return
        except Exception as err:
            found = re.findall(r"^wxscale\.errors\.(\w+): (.+)$", str(err), flags=re.MULTILINE)
            cls = getattr(wxscale.errors, found[-1][0], None) if found else None
            if "Traceback" not in str(err) or not (isinstance(cls, type) and issubclass(cls, WxscaleError)):
                raise
            raise cls(found[-1][1].strip()) from None
        yield xy


# ----- DALI


class _DaliSource:
    """Per-batch callable for `fn.external_source(parallel=True, batch=True, batch_info=True)`.

    Stateless, as DALI requires: batch (DALI epoch j, iteration i) is our epoch e0 + j, batch i (+ b0 in the
    first epoch, which is how a resume starts mid-epoch). Each call reads one batch in a worker process; the
    workers take whole batches in turn, several in flight. (A per-sample callable, batch=False, ran at half this
    rate on CPU: DALI's worker machinery then dispatches and serialises every sample separately.) A batch may
    be shorter than the pipeline's batch size (the last one without drop_last).
    """

    def __init__(self, reader: SampleReader, sampler: EpochSampler, epoch0: int, batch0: int):
        self.reader, self.sampler, self.epoch0, self.batch0 = reader, sampler, epoch0, batch0

    def __call__(self, info) -> tuple[np.ndarray, np.ndarray]:
        epoch = self.epoch0 + info.epoch_idx
        b = info.iteration + (self.batch0 if info.epoch_idx == 0 else 0)
        if b >= self.sampler.n_nonempty:
            raise StopIteration  # also for the iterations DALI prefetches past the end, and an empty last batch
        return self.reader.read_batch(self.sampler.batch(epoch, b))  # normalised in the pipeline


class DaliLoader(_Loader):
    """DALI pipeline: parallel external source (h5py in worker processes), then fn.normalize.

    On CPU (device None or "cpu") the pipeline runs with device_id=None and its Python workers are forked
    (fast start; spawn would re-import `__main__`). With device="cuda" it runs on the current GPU, normalises
    there and hands out CUDA tensors; its workers are then spawned (fork after CUDA is initialised is
    unsafe), so the calling script needs an `if __name__ == "__main__":` guard, as the `wxscale` command has.
    """

    kind = "dali"
    _pipe = None

    def __init__(self, *args, num_threads: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        try:
            import nvidia.dali  # noqa: F401
        except ImportError as err:
            raise WxscaleError(f"--loader dali: NVIDIA DALI is not importable ({err}); {DALI_INSTALL_HINT}") from err
        import torch

        dev = torch.device(self.device) if self.device is not None else torch.device("cpu")
        self._gpu = dev.type == "cuda"
        if self._gpu:
            self._device_id = dev.index if dev.index is not None else torch.cuda.current_device()
            self.device = torch.device("cuda", self._device_id)
        elif dev.type != "cpu":
            raise WxscaleError(f"--loader dali supports device cpu or cuda, not {dev}; use --loader torch")
        self._num_threads = num_threads or max(1, min(4, os.cpu_count() or 1))
        self._pipe = None
        self._pipe_pos: tuple[int, int] | None = None  # (epoch, batch) the pipeline produces next

    def _build(self, epoch: int, start: int) -> None:
        from nvidia.dali import fn, types
        from nvidia.dali.pipeline import Pipeline

        self.close()
        c = self.meta.n_channels
        h, w = self.meta.grid
        sample_bytes = 4 * (self.rollout_steps + 1) * c * h * w
        pipe = Pipeline(
            batch_size=self.batch_size,
            num_threads=self._num_threads,
            device_id=self._device_id if self._gpu else None,
            py_num_workers=max(1, self.num_workers),
            py_start_method="spawn" if self._gpu else "fork",
            prefetch_queue_depth=2,
            seed=self.sampler.seed,
        )
        with pipe:
            x, y = fn.external_source(
                _DaliSource(self.reader, self.sampler, epoch, start),
                num_outputs=2,
                batch=True,
                batch_info=True,
                parallel=True,
                dtype=types.FLOAT,
                ndim=[3, 4],
                prefetch_queue_depth=2 * max(1, self.num_workers),  # batches in flight
                bytes_per_sample_hint=sample_bytes + 4096,  # DALI sizes its shared memory: batch x this
            )
            if self._gpu:
                x, y = x.gpu(), y.gpu()
            # The same float32 constants and operations as SampleReader.normalise: bitwise equal outputs.
            mean, std = self.reader.mean, self.reader.std
            pipe.set_outputs(fn.normalize(x, mean=mean, stddev=std), fn.normalize(y, mean=mean[None], stddev=std[None]))
        pipe.build()
        self._pipe, self._pipe_pos = pipe, (epoch, start)

    def _sync(self, epoch: int, start: int) -> None:
        """Make the pipeline's next batch (epoch, start): finish a drained epoch, or rebuild after a jump."""
        if self._pipe is not None and self._pipe_pos is not None and self._pipe_pos[1] >= self.sampler.n_nonempty:
            try:  # every batch of the epoch was read: collect DALI's StopIteration and start the next epoch
                self._pipe.run()
                self._pipe_pos = None  # more batches than expected: the pipeline is out of step
            except StopIteration:
                self._pipe.reset()
                self._pipe_pos = (self._pipe_pos[0] + 1, 0)
        if self._pipe is None or self._pipe_pos != (epoch, start):
            self._build(epoch, start)

    def _batches(self, epoch: int, start: int):
        n, n_pipe = len(self), self.sampler.n_nonempty
        if start < n_pipe:
            self._sync(epoch, start)
            batches = _worker_errors_as_one_line(self._pipe.run() for _ in range(start, n_pipe))
            for b, (x, y) in enumerate(batches, start):
                self._pipe_pos = (epoch, b + 1)
                yield self._to_torch(x), self._to_torch(y)
        for _ in range(max(start, n_pipe), n):  # an empty last batch: DALI refuses those, so it is made here
            import torch

            x, y = self.reader.read_batch([])
            yield torch.from_numpy(x).to(self.device or "cpu"), torch.from_numpy(y).to(self.device or "cpu")

    def _to_torch(self, tl):
        import torch

        if not self._gpu:
            return torch.from_numpy(tl.as_array())  # as_array copies out of DALI's buffer
        from nvidia.dali.plugin.pytorch import feed_ndarray

        t = tl.as_tensor()
        out = torch.empty(t.shape(), dtype=torch.float32, device=self.device)
        feed_ndarray(t, out, cuda_stream=torch.cuda.current_stream(self.device))
        return out

    def close(self) -> None:
        if self._pipe is not None:
            del self._pipe
            self._pipe, self._pipe_pos = None, None
        super().close()

    def __del__(self):
        with contextlib.suppress(Exception):  # may run on a half-built loader, or at interpreter exit
            self.close()


def build_loader(
    dataset_dir: str | os.PathLike,
    split: str = "train",
    *,
    batch_size: int = 8,
    rollout_steps: int = 1,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    kind: str = "torch",
    num_workers: int = 2,
    shuffle: bool = True,
    drop_last: bool = True,
    device: Any = None,
    max_samples: int | None = None,
) -> _Loader:
    """A loader over `split` of a dataset dir (module doc for order, sharding, position and normalisation).

    batch_size is the per-rank batch; device None gives CPU tensors, "cuda" tensors on the current GPU.
    max_samples: read only a fixed subset of that many samples (:meth:`SampleIndex.keep_subset`).
    """
    if kind not in KINDS:
        raise WxscaleError(f"--loader {kind!r} unknown; choose one of {', '.join(KINDS)}")
    cls = DaliLoader if kind == "dali" else TorchLoader
    return cls(
        dataset_dir,
        split,
        batch_size=batch_size,
        rollout_steps=rollout_steps,
        seed=seed,
        rank=rank,
        world_size=world_size,
        num_workers=num_workers,
        shuffle=shuffle,
        drop_last=drop_last,
        device=device,
        max_samples=max_samples,
    )
