"""The watch layer's indexes (`kubeforge.indexes`)."""

from __future__ import annotations

from kubeforge.indexes import Index, Indexes

A = ("ml", "a", "uid-a")
B = ("ml", "b", "uid-b")


def test_values_by_key_from_several_objects() -> None:
    idx = Index()
    idx.replace(A, {("ml", "tj"): {"pod": "a"}})
    idx.replace(B, {("ml", "tj"): {"pod": "b"}})
    assert ("ml", "tj") in idx and len(idx) == 1 and list(idx) == [("ml", "tj")]
    assert idx.all(("ml", "tj")) == [{"pod": "a"}, {"pod": "b"}] == idx[("ml", "tj")]
    assert idx.one(("ml", "tj")) == {"pod": "a"}
    assert idx.one(("ml", "other")) is None and idx.all(("ml", "other")) == []


def test_an_equal_value_keeps_its_identity_a_new_one_replaces_it() -> None:
    idx = Index()
    first = {"status": {"phase": "Running"}}
    idx.replace(A, {"k": first})
    idx.replace(A, {"k": {"status": {"phase": "Running"}}})  # equal: the held one stays
    assert idx.one("k") is first
    changed = {"status": {"phase": "Succeeded"}}
    idx.replace(A, {"k": changed})
    assert idx.one("k") is changed


def test_keys_no_longer_given_and_discarded_objects_leave() -> None:
    idx = Index()
    idx.replace(A, {"k1": 1, "k2": 2})
    idx.replace(B, {"k1": 3})
    idx.replace(A, {"k2": 2})
    assert idx.all("k1") == [3] and idx.all("k2") == [2]
    idx.discard(B)
    assert "k1" not in idx and list(idx) == ["k2"]
    idx.discard(A)
    idx.discard(A)  # twice: nothing left, no error
    assert len(idx) == 0


def test_indexes_ensure_once() -> None:
    indexes = Indexes()
    first = indexes.ensure("x")
    assert indexes.ensure("x") is first and indexes["x"] is first
