"""The dashboard's memory budget (README "Memory budget"): the caches' bounds, display copies and
the budget's settings (memory measured in subprocesses: integration/test_memory_budget.py)."""

import numpy as np
import pytest

from ui.cache import ByteLRU


def test_byte_lru_forgets_the_least_recently_used_first():
    cache = ByteLRU(max_bytes=100)
    for key in "abc":
        cache.put(key, key.upper(), 40)
    assert cache.get("a") is None and cache.nbytes == 80 and len(cache) == 2  # 'a' went for 'c'
    assert cache.get("b") == "B"  # now the most recent
    cache.put("d", "D", 40)
    assert cache.get("c") is None and cache.get("b") == "B" and cache.get("d") == "D"


def test_byte_lru_bounds_entries_age_and_never_holds_a_value_larger_than_itself():
    now = [0.0]
    cache = ByteLRU(max_bytes=1000, max_entries=2, ttl_s=60, clock=lambda: now[0])
    for key in "xyz":
        cache.put(key, key, 1)
    assert len(cache) == 2 and cache.get("x") is None
    now[0] = 61
    assert cache.get("y") is None and cache.get("z") is None and cache.nbytes == 0
    cache.put("huge", "value", 1001)
    assert cache.get("huge") is None and cache.nbytes == 0
    cache.put("k", 1, 10)
    cache.put("k", 2, 20)  # replacing a key counts its bytes once
    assert cache.get("k") == 2 and cache.nbytes == 20


def test_display_copies_are_bounded_and_keep_the_heatmap_on_the_film():
    from dataclasses import dataclass

    import ui

    @dataclass
    class Called:
        heatmap: np.ndarray | None

    film = np.zeros((1750, 1400), np.uint8)
    heat = np.zeros((1750, 1400), np.float32)
    heat[:875] = 1.0  # the top half
    gray, d = ui.for_display(film, Called(heat), side=1024)
    assert gray.shape == (1024, 819) and d.heatmap.shape == gray.shape and d.heatmap.dtype == np.float16
    assert d.heatmap[:500].min() == 1.0 and d.heatmap[530:].max() == 0.0
    model_sized = np.full((224, 224), 200, np.uint8)  # a uint8 map at model resolution stays as it is
    assert ui.for_display(film, Called(model_sized))[1].heatmap is model_sized
    small, none = ui.for_display(np.zeros((300, 200), np.uint8), Called(None))
    assert small.shape == (300, 200) and none.heatmap is None


def test_the_budget_is_read_from_the_environment_and_a_bad_value_is_a_config_error():
    from pneumo_core.errors import ConfigError
    from pneumo_core.settings import MemoryBudget, load_settings
    budget = load_settings({"PNEUMO_MAX_FILM_MPX": "36", "PNEUMO_CACHE_MB": "64", "PNEUMO_MODELS_LOADED": "1"}).budget
    assert (budget.max_film_pixels, budget.cache_bytes, budget.models_loaded) == (36_000_000, 64 * 2 ** 20, 1)
    assert load_settings({}).budget == MemoryBudget()
    with pytest.raises(ConfigError, match="PNEUMO_FILES_PER_UPLOAD"):
        load_settings({"PNEUMO_FILES_PER_UPLOAD": "many"})


