"""Finding, verifying, caching and downloading dataset files (a tiny generated dataset served on 127.0.0.1)."""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import gzipped

from resnetlab.data import catalog, dataset_status, fetch_dataset, load_dataset, sources
from resnetlab.errors import DataError


def _serve(tiny, folder, *, corrupt: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in tiny.files.items():
        packed = bytearray(gzipped(data))
        if corrupt:
            packed[len(packed) // 2] ^= 0xFF
        (folder / f"{name}.gz").write_bytes(bytes(packed))


def _assert_is_tiny(ds, tiny, train=True) -> None:
    prefix = "train" if train else "t10k"
    assert torch.equal(
        ds.images[:, 0], torch.from_numpy(tiny.arrays[f"{prefix}-images-idx3-ubyte"])
    )
    assert torch.equal(
        ds.labels, torch.from_numpy(tiny.arrays[f"{prefix}-labels-idx1-ubyte"].astype(np.int64))
    )
    assert ds.classes == ["a", "b", "c"] and ds.name == "tiny"


def test_download_verifies_and_caches_decompressed_files(
    tiny, http_root, isolated_cache, monkeypatch
):
    served, url = http_root
    _serve(tiny, served / "good")
    tiny.use_mirrors(monkeypatch, url + "good/")
    _assert_is_tiny(load_dataset("tiny"), tiny)
    _assert_is_tiny(load_dataset("tiny", train=False), tiny, train=False)
    assert sorted(p.name for p in (isolated_cache / "tiny").iterdir()) == sorted(
        tiny.files
    )  # no .gz, no temp file
    monkeypatch.setattr(sources, "_stream_verified", lambda *a: pytest.fail("downloaded again"))
    _assert_is_tiny(load_dataset("tiny"), tiny)


def test_corrupted_download_is_rejected_and_the_next_mirror_used(
    tiny, http_root, isolated_cache, monkeypatch
):
    served, url = http_root
    _serve(tiny, served / "bad", corrupt=True)
    _serve(tiny, served / "good")
    tiny.use_mirrors(monkeypatch, url + "bad/")
    with pytest.raises(DataError, match=r"md5 .* expected"):
        load_dataset("tiny")
    leftovers = (
        list((isolated_cache / "tiny").iterdir()) if (isolated_cache / "tiny").exists() else []
    )
    assert leftovers == []  # nothing half-written under a final (or temporary) name
    tiny.use_mirrors(monkeypatch, url + "bad/", url + "good/")
    _assert_is_tiny(load_dataset("tiny"), tiny)


def test_failing_mirrors_are_skipped(tiny, http_root, monkeypatch):
    served, url = http_root
    _serve(tiny, served / "good")
    tiny.use_mirrors(monkeypatch, "http://127.0.0.1:1/", url + "missing/", url + "good/")
    _assert_is_tiny(load_dataset("tiny"), tiny)


def test_offline_error_lists_folders_package_and_files(tiny, tmp_path, isolated_cache, monkeypatch):
    monkeypatch.setenv("RESNETLAB_DATA", str(tmp_path / "shelf"))
    with pytest.raises(sources.DataMissingError) as err:
        load_dataset("tiny")
    message = str(err.value)
    assert "\n" not in message
    for expected in (
        str(tmp_path / "shelf" / "tiny"),
        str(isolated_cache / "tiny"),
        "127.0.0.1:1",
        "apt-get install dataset-tiny",
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
    ):
        assert expected in message


def test_data_dir_is_used_alone(tiny, tmp_path, isolated_cache):
    tiny.write(isolated_cache / "tiny")  # a good copy elsewhere must not be used
    with pytest.raises(sources.DataMissingError, match="used alone") as err:
        load_dataset("tiny", root=tmp_path / "empty")
    assert "download failed" not in str(err.value)
    _assert_is_tiny(load_dataset("tiny", root=tiny.write(tmp_path / "mine")), tiny)


def test_search_order(tiny, tmp_path, isolated_cache, monkeypatch):
    system = tiny.write(tmp_path / "system", compressed=True)
    monkeypatch.setitem(catalog.DATASETS, "tiny", replace(tiny.spec, system_dirs=(str(system),)))
    assert dataset_status("tiny")["splits"]["train"]["source"] == "system folder"
    # the listing only reads (issue 31): it says the same the second time
    assert dataset_status("tiny")["splits"]["train"]["source"] == "system folder"
    load_dataset("tiny", train=True)
    # a load decompressed the system folder's .gz into the cache: from now on it is found first
    assert dataset_status("tiny")["splits"]["train"]["source"] == "user cache"
    monkeypatch.setenv("RESNETLAB_DATA", str(tmp_path / "env"))
    tiny.write(tmp_path / "env" / "tiny")
    status = dataset_status("tiny")["splits"]["train"]
    assert (status["source"], status["folder"]) == (
        "RESNETLAB_DATA",
        str(tmp_path / "env" / "tiny"),
    )


def test_each_file_is_hashed_once(tiny, tmp_path, isolated_cache, monkeypatch):
    root = tiny.write(tmp_path / "ro", compressed=True)
    before = sorted(os.listdir(root))
    checks = []
    real = sources._check_bytes
    monkeypatch.setattr(
        sources, "_check_bytes", lambda *a, **k: checks.append(a[1]) or real(*a, **k)
    )
    load_dataset("tiny", root=root)
    assert len(checks) == 2
    load_dataset("tiny", root=root)
    assert len(checks) == 2  # the stamp answered: no hashing, no decompression
    assert sorted(os.listdir(root)) == before  # stamps and copies live in the user cache
    assert (isolated_cache / "verified.json").is_file()


def test_a_changed_file_is_verified_again(tiny, tmp_path):
    root = tiny.write(tmp_path / "d")
    load_dataset("tiny", root=root)
    path = root / "train-images-idx3-ubyte"
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    with pytest.raises(DataError, match=f"{path}: expected md5 .*; delete it"):
        load_dataset("tiny", root=root)


def test_truncated_files_get_one_line_errors(tiny, tmp_path):
    root = tiny.write(tmp_path / "d")
    image_file = root / "train-images-idx3-ubyte"
    image_file.write_bytes(tiny.files["train-images-idx3-ubyte"][:1000])
    with pytest.raises(DataError) as err:
        load_dataset("tiny", root=root)
    assert str(err.value) == (
        f"{image_file}: expected 2,576 bytes, found 1,000 (truncated); delete it and run "
        f"`resnetlab data fetch` (or place a good copy)"
    )
    image_file.unlink()
    packed = root / "train-images-idx3-ubyte.gz"
    packed.write_bytes(gzipped(tiny.files["train-images-idx3-ubyte"])[:200])
    with pytest.raises(
        DataError, match=f"{packed}: expected a complete gzip file, found a damaged one"
    ):
        load_dataset("tiny", root=root)


def test_fetch_into_a_data_dir(tiny, http_root, tmp_path, monkeypatch):
    served, url = http_root
    _serve(tiny, served)
    tiny.use_mirrors(monkeypatch, url)
    result = fetch_dataset("tiny", root=tmp_path / "dd")
    assert {s["examples"] for s in result["splits"].values()} == {40, 12}
    assert sorted(p.name for p in (tmp_path / "dd" / "tiny").iterdir()) == sorted(
        f"{n}.gz" for n in tiny.files
    )
    assert dataset_status("tiny", root=tmp_path / "dd")["splits"]["test"]["source"] == "--data-dir"


def test_status_names_a_bad_file(tiny, tmp_path):
    root = tiny.write(tmp_path / "d")
    (root / "t10k-labels-idx1-ubyte").write_bytes(b"\0\0\x08\x01junk")
    splits = dataset_status("tiny", root=root)["splits"]
    assert splits["train"]["status"] == "ok" and splits["train"]["check"] == "md5"
    assert splits["test"]["status"] == "bad" and "t10k-labels-idx1-ubyte" in splits["test"]["error"]
