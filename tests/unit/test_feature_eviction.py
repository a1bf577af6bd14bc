"""The feature cache stays under its size: least recently used entries go first."""
import os

import numpy as np

from pneumo_core.learn.features import evict


def _entry(folder, name, kb, age):
    path = folder / f"{name}.npy"
    np.save(path, np.zeros(kb * 256, np.float32))       # 1 KB per 256 float32
    os.utime(path, (1_000_000 + age, 1_000_000 + age))
    return path


def test_least_recently_used_entries_are_evicted_first(tmp_path):
    old, middle, new = (_entry(tmp_path, n, 100, age) for n, age in (("old", 1), ("middle", 2), ("new", 3)))
    writing = tmp_path / "x.abcd1234.4242.tmp.npy"        # another process is writing it
    writing.write_bytes(b"\0" * 300_000)
    assert evict(tmp_path, 250 * 1024) == [old]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["middle.npy", "new.npy", writing.name]
    os.utime(middle)                                       # a cache hit makes it the newest
    assert evict(tmp_path, 150 * 1024) == [new]
    assert evict(tmp_path, 10**9) == []


def test_the_entry_just_written_is_kept_even_over_the_limit(tmp_path):
    big = _entry(tmp_path, "big", 300, 5)
    other = _entry(tmp_path, "other", 10, 1)
    assert evict(tmp_path, 100 * 1024, keep=big) == [other] and big.exists()
