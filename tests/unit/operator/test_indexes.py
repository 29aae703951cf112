"""Reading kopf's indexes (`kubeforge.indexes`)."""

from __future__ import annotations

from typing import Any

import kopf
from kubeforge.indexes import IndexView, bind


def test_one_and_all_values_of_a_key() -> None:
    indexes: dict[str, Any] = {"pods": {("ml", "tj"): [{"pod": "a"}, {"pod": "b"}]}}
    idx = IndexView(indexes, "pods")
    assert ("ml", "tj") in idx and len(idx) == 1 and list(idx) == [("ml", "tj")]
    assert idx.all(("ml", "tj")) == [{"pod": "a"}, {"pod": "b"}]
    assert idx.one(("ml", "tj")) == {"pod": "a"}
    assert idx.one(("ml", "other")) is None and idx.all(("ml", "other")) == []


def test_a_view_reads_the_index_bound_after_it_was_made() -> None:
    indexes: dict[str, Any] = {}
    idx = IndexView(indexes, "tjs")
    assert idx.one("k") is None and list(idx) == [] and "k" not in idx
    indexes["tjs"] = {"k": ["v"]}
    assert idx.one("k") == "v" and "k" in idx


def test_an_empty_store_gives_none() -> None:
    idx = IndexView({"x": {"k": []}}, "x")
    assert idx.one("k") is None and idx.all("k") == []


def test_bind_keeps_only_kopf_indexes_from_handler_kwargs() -> None:
    target: dict[str, Any] = {}
    bind(target, {"logger": object(), "memo": {}, "not-an-index": {"k": ["v"]}})
    assert target == {}
    # kopf's Index is public (kopf.Index); a real one comes from kopf at start-up
    assert isinstance(kopf.Index, type)
