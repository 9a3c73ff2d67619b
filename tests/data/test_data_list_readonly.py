"""Issue 31, item 13: `resnetlab data list` writes nothing, and what it says stays the same."""

from __future__ import annotations

import json

import pytest

from resnetlab import cli


@pytest.mark.needs_fashion_mnist
def test_data_list_writes_nothing_and_found_in_stays(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.delenv("RESNETLAB_DATA", raising=False)
    sources = []
    for _ in range(2):
        assert cli.main(["data", "list", "--json"]) == 0
        listing = {d["name"]: d for d in json.loads(capsys.readouterr().out)}
        splits = listing["fashion-mnist"]["splits"]
        assert {s["status"] for s in splits.values()} == {"ok"}
        sources.append({k: (s["source"], s["folder"]) for k, s in splits.items()})
    assert sources[0] == sources[1] and sources[0]["train"][0] == "system folder"
    assert [p for p in cache.rglob("*")] == []  # no decompressed copy, no stamps
