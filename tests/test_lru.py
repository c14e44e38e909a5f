"""proxy.lru: bounded in entries and in weight, least recently used out first."""

from __future__ import annotations

from proxy.lru import LRU


def test_a_get_keeps_an_entry_and_the_least_recently_used_goes_first() -> None:
    lru: LRU[str, int] = LRU(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1  # now b is the least recently used
    lru.put("c", 3)
    assert (lru.get("a"), lru.get("b"), lru.get("c")) == (1, None, 3)
    assert len(lru) == 2


def test_a_put_again_replaces_and_renews() -> None:
    lru: LRU[str, int] = LRU(2)
    lru.put("a", 1)
    lru.put("b", 2)
    lru.put("a", 10)
    lru.put("c", 3)
    assert (lru.get("a"), lru.get("b"), len(lru)) == (10, None, 2)


def test_bounded_by_weight_counted_once_per_entry() -> None:
    lru: LRU[str, bytes] = LRU(max_weight=10, weigh=len)
    lru.put("a", b"x" * 4)
    lru.put("a", b"x" * 4)  # replaced, not counted twice
    lru.put("b", b"x" * 4)
    assert lru.weight == 8 and len(lru) == 2
    lru.put("c", b"x" * 4)
    assert lru.get("a") is None and lru.weight == 8
    assert lru.pop("b") == b"x" * 4 and lru.weight == 4
    assert lru.pop("b") is None and lru.weight == 4


def test_both_bounds_and_clear() -> None:
    lru: LRU[str, bytes] = LRU(3, max_weight=5, weigh=len)
    for key in ("a", "b", "c", "d"):
        lru.put(key, b"")
    assert len(lru) == 3 and lru.get("a") is None
    lru.put("big", b"x" * 5)  # within the weight: only the count drops one
    assert len(lru) == 3 and lru.get("b") is None and lru.weight == 5
    lru.put("big2", b"x" * 5)
    assert lru.get("big") is None and lru.get("big2") == b"x" * 5 and lru.weight == 5
    lru.clear()
    assert len(lru) == 0 and lru.weight == 0


def test_a_value_heavier_than_the_bound_is_not_kept_and_empties_the_map() -> None:
    """Callers that must keep the others (Lane.learn, Variants) check before a put."""
    lru: LRU[str, bytes] = LRU(max_weight=3, weigh=len)
    lru.put("a", b"x")
    lru.put("huge", b"x" * 4)
    assert len(lru) == 0 and lru.weight == 0
