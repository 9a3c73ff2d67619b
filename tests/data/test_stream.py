"""Streaming data (data/shards.py, data/decode.py, data/stream.py) on small generated folders of
JPEG and PNG files: packing and its manifest, damaged shards, the crops, determinism across
worker counts and processes, bad images, a dying worker, memory."""

from __future__ import annotations

import gc
import io
import json
import os
import resource
import signal
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnetlab import cli
from resnetlab.data import decode
from resnetlab.data.augment import Augment
from resnetlab.data.eval_view import EvalView
from resnetlab.data.shards import (
    MANIFEST,
    list_packed,
    open_image_folder,
    open_shards,
    pack_builtin,
    pack_folder,
)
from resnetlab.data.stream import StreamLoader, alternate_flip, make_stream_loaders
from resnetlab.errors import DataError, UsageError

CLASSES = ("ant", "bee", "cat")


def write_folder(root: Path, train: int = 24, test: int = 9, seed: int = 0) -> Path:
    """root/{train,test}/CLASS/*: every other image a JPEG (the rest PNG), 20-60 px a side."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", train), ("test", test)):
        for i in range(n):
            folder = root / split / CLASSES[i % 3]
            folder.mkdir(parents=True, exist_ok=True)
            h, w = (int(v) for v in rng.integers(20, 61, 2))
            base = np.full((h, w, 3), 60 * (i % 3) + 40, np.uint8)
            pixels = (base + rng.integers(0, 40, (h, w, 3))).astype(np.uint8)
            ext = "jpg" if i % 2 else "png"
            Image.fromarray(pixels).save(folder / f"{i:03d}.{ext}")
    return root


@pytest.fixture
def folder(tmp_path) -> Path:
    return write_folder(tmp_path / "photos")


@pytest.fixture
def packed(folder, tmp_path) -> Path:
    pack_folder(folder, tmp_path / "packed", shard_bytes=20_000)  # several shards
    return tmp_path / "packed"


def test_pack_keeps_bytes_and_writes_a_checked_manifest(folder, packed):
    manifest = json.loads((packed / MANIFEST).read_text())
    assert manifest["classes"] == list(CLASSES)
    train = manifest["splits"]["train"]
    assert train["count"] == 24 and train["class_counts"] == [8, 8, 8]
    assert len(train["shards"]) > 1
    originals = sorted(p.read_bytes() for p in (folder / "train").rglob("*.*"))
    stored = []
    for shard in train["shards"]:
        path = packed / shard["file"]
        assert shard["bytes"] == path.stat().st_size
        data = path.read_bytes()
        stored += [data[o : o + n] for o, n, _ in shard["members"]]
    assert sorted(stored) == originals  # encoded bytes as they were, each once
    lo, hi = manifest["image_size"]["min"], manifest["image_size"]["max"]
    assert 20 <= min(lo) and max(hi) <= 60


def test_shards_are_plain_webdataset_tars(packed):
    import webdataset

    shards = sorted(str(p) for p in packed.glob("train-*.tar"))
    samples = list(webdataset.WebDataset(shards, shardshuffle=False))
    assert len(samples) == 24
    for s in samples:
        image = s.get("jpg", s.get("png"))
        assert Image.open(io.BytesIO(image)).size[0] >= 20
        assert int(s["cls"]) in (0, 1, 2)


def test_damaged_and_missing_shards_are_one_line_naming_them(packed):
    open_shards(packed, True)  # verified once: remembered, and checked again once changed
    shard = sorted(packed.glob("train-*.tar"))[1]
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF
    before = shard.stat().st_mtime_ns
    shard.write_bytes(bytes(data))
    os.utime(shard, ns=(before + 10**7, before + 10**7))  # a rewrite's new mtime, on any clock
    with pytest.raises(DataError, match=f"shard {shard} is damaged.*pack the data again"):
        open_shards(packed, True)
    shard.unlink()
    with pytest.raises(DataError, match=f"shard {shard} is missing") as e:
        open_shards(packed, True)
    assert "\n" not in str(e.value)
    open_shards(packed, False)  # the test split's shards are intact


def test_random_resized_box_follows_torchvision():
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        h, w = (int(v) for v in torch.randint(20, 400, (2,), generator=gen))
        u = torch.rand(decode.DRAWS, generator=gen, dtype=torch.float64)
        left, top, right, bottom = decode.random_resized_box(h, w, u)
        ch, cw = bottom - top, right - left
        assert 0 <= left and 0 <= top and right <= w and bottom <= h
        area = ch * cw / (h * w)
        fallback = (cw, ch) in ((w, h), (w, round(w / 0.75)), (round(h * 4 / 3), h))
        assert fallback or (0.08 - 0.02 <= area <= 1 and 0.7 <= cw / ch <= 1.4)
    # an image no attempt fits: the centre crop of the nearest allowed ratio
    always_fail = torch.full((decode.DRAWS,), 0.999, dtype=torch.float64)  # too big each time
    assert decode.random_resized_box(100, 1000, always_fail) == (433, 0, 433 + 133, 100)


def test_reduced_scale_decode_is_close_to_a_full_decode():
    rng = np.random.default_rng(1)
    small = rng.random((12, 16, 3)) * 255
    image = Image.fromarray(small.astype(np.uint8)).resize((640, 480), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=95)
    box = (0.0, 0.0, 640.0, 480.0)
    ours = decode.decode_box(buf.getvalue(), 3, box, 64).float()  # decoded at 1/4 or 1/8 scale
    full = np.asarray(Image.open(buf).convert("RGB").resize((64, 64), Image.Resampling.BILINEAR))
    ref = torch.from_numpy(full.copy()).permute(2, 0, 1).float()
    assert (ours - ref).abs().mean() < 3.0  # of 255


def batches(loader, epoch):
    loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def test_epochs_follow_the_seed_whatever_the_workers(packed):
    split = open_shards(packed, True)
    make = lambda workers, seed=0: StreamLoader(  # noqa: E731
        split, 8, shuffle=True, size=16, workers=workers, seed=seed
    )
    a, b = batches(make(0), 1), batches(make(2), 1)
    assert len(a) == 3 and all(
        torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(a, b)
    )
    again = batches(make(2), 1)
    assert all(torch.equal(x, u) for (x, _), (u, _) in zip(a, again))
    other_epoch, other_seed = batches(make(0), 2), batches(make(0, seed=1), 1)
    assert not torch.equal(a[0][0], other_epoch[0][0]) and not torch.equal(
        a[0][0], other_seed[0][0]
    )


def test_processes_share_each_batch_and_evaluation_sees_each_example_once(packed):
    split = open_shards(packed, True)
    one = batches(StreamLoader(split, 8, shuffle=True, size=16, workers=0), 0)
    ranks = [
        batches(StreamLoader(split, 8, shuffle=True, size=16, workers=0, rank=r, world_size=2), 0)
        for r in (0, 1)
    ]
    for i, (x, y) in enumerate(one):  # the global batch, split in rank order, same pixels
        assert torch.equal(torch.cat([ranks[0][i][0], ranks[1][i][0]]), x)
        assert torch.equal(torch.cat([ranks[0][i][1], ranks[1][i][1]]), y)
    test = open_shards(packed, False)  # 9 examples over 2 processes: 4 + 5, no padding
    seen = []
    for r in (0, 1):
        loader = StreamLoader(test, 4, shuffle=False, size=16, workers=0, rank=r, world_size=2)
        seen += [i for batch in loader.epoch_keys() for _, i, _ in batch]
        assert loader.num_examples == len([x for x, _ in batches(loader, 0) for _ in x])
    assert sorted(seen) == list(range(9))


def test_evaluation_views_and_defaults(packed):
    test = open_shards(packed, False)
    loaders = make_stream_loaders(None, None, test, batch_size=4, eval_batch=5, size=24, workers=0)
    x, y = next(iter(loaders.test))
    assert x.shape == (5, 3, 24, 24) and x.dtype == torch.float32 and y.dtype == torch.int64
    # the default view: Resize(round(24 / 0.875) = 27) + CenterCrop(24) (data/eval_view.py)
    shown = (x[0] * 255).round().to(torch.uint8)
    assert torch.equal(shown, EvalView(27, 24).read(test.read(0), 3))


def test_extra_transform_runs_after_the_crop_with_the_sample_generator(packed):
    split = open_shards(packed, True)
    seen = []

    def darken(image, gen):
        assert image.dtype == torch.uint8 and image.shape == (3, 16, 16)
        seen.append(float(torch.rand(1, generator=gen)))
        return image // 2

    def host(loader):
        loader.set_epoch(0)
        return [x for x, _ in loader.host_batches()]

    plain = host(StreamLoader(split, 8, shuffle=True, size=16, workers=0))
    dark = host(StreamLoader(split, 8, shuffle=True, size=16, workers=0, extra_transform=darken))
    assert len(seen) == 24 and len(set(seen)) == 24  # a generator of each sample's own
    assert all(torch.equal(d, p // 2) for d, p in zip(dark, plain))


def shifted(view: torch.Tensor, dy: int, dx: int, pad: int) -> torch.Tensor:
    """`view` padded by `pad` black pixels a side, the window at (dy, dx): computed by hand."""
    c, h, w = view.shape
    out = torch.zeros_like(view)
    for y in range(h):
        for x in range(w):
            sy, sx = y + dy - pad, x + dx - pad
            if 0 <= sy < h and 0 <= sx < w:
                out[:, y, x] = view[:, sy, sx]
    return out


def test_small_image_augmentations_match_the_in_memory_recipe(packed):
    """Without --random-resized-crop a streamed training image is its evaluation view at the
    training side, shifted by a padded crop and maybe mirrored (as the in-memory loader does);
    alternating flips mirror each image in every other epoch; erasing sets boxes to the mean."""
    split, pad = open_shards(packed, True), 2
    views = [  # each image's centred square at 16 px, before the padded crop and the flip
        decode.train_view(split.read(i), 3, 16, torch.Generator(), resized_crop=False, flip=False)
        for i in range(len(split))
    ]
    loader = StreamLoader(
        split, 8, shuffle=True, size=16, workers=0, augment=Augment(crop_padding=pad, flip=True)
    )
    loader.set_epoch(0)
    keys = [i for batch in loader.epoch_keys() for _, i, _ in batch]
    images = torch.cat([x for x, _ in loader.host_batches()])
    offsets, flips = set(), 0
    for i, image in zip(keys, images):
        found = [
            (dy, dx, f)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            for f in (False, True)
            if torch.equal(
                image,
                shifted(views[i], dy, dx, pad).flip(-1) if f else shifted(views[i], dy, dx, pad),
            )
        ]
        assert found, f"sample {i} is no padded crop of its view"
        offsets.add(found[0][:2])
        flips += found[0][2]
    assert len(offsets) > 5 and 0 < flips < len(keys)  # random offsets and flips, not one

    alternating = StreamLoader(
        split, 8, shuffle=True, size=16, workers=0, augment=Augment(flip=True, alternate_flip=True)
    )
    seen = {}
    for epoch in (0, 1, 2):
        alternating.set_epoch(epoch)
        keys = [i for batch in alternating.epoch_keys() for _, i, _ in batch]
        for i, image in zip(keys, torch.cat([x for x, _ in alternating.host_batches()])):
            mirrored = torch.equal(image, views[i].flip(-1))
            assert mirrored or torch.equal(image, views[i])
            assert mirrored == alternate_flip(0, epoch, i)
            seen.setdefault(i, []).append(mirrored)
    assert all(m[0] != m[1] and m[0] == m[2] for m in seen.values())
    assert 0 < sum(m[0] for m in seen.values()) < len(seen)

    mean, std = [0.5] * 3, [0.25] * 3
    plain, erased = (
        StreamLoader(
            split,
            8,
            shuffle=True,
            size=16,
            workers=0,
            normalize=(mean, std),
            augment=Augment(erasing=p),
        )
        for p in (0.0, 1.0)
    )
    for loader in (plain, erased):
        loader.set_epoch(0)
    for (x, _), (e, _) in zip(plain, erased):
        changed = x != e
        assert torch.all(e[changed] == 0)  # the mean after normalisation
        per_image = changed.flatten(1).float().mean(1)
        assert torch.all(per_image > 0) and torch.all(per_image <= 0.4 + 1e-6)
    with pytest.raises(UsageError, match="replaces the padded crop"):
        Augment(crop_padding=1, resized_crop=True)
    with pytest.raises(UsageError, match="for training loaders"):
        StreamLoader(split, 8, shuffle=False, workers=0, augment=Augment(flip=True))


def test_bad_training_images_are_replaced_so_batches_stay_full_and_are_counted(folder):
    good = next((folder / "train" / "ant").glob("*.jpg")).read_bytes()
    (folder / "train" / "ant" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "train" / "bee" / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    split = open_image_folder(f"imagefolder:{folder}", True)
    bad = sorted(i for i, f in enumerate(split.files) if Path(f).stem in ("truncated", "garbage"))
    assert len(split) == 26 and len(bad) == 2
    loader = StreamLoader(split, 8, shuffle=True, size=16, workers=2, drop_last=True)
    got = batches(loader, 0)
    assert [len(y) for _, y in got] == [8, 8, 8]  # a bad image does not shrink its batch
    order = [i for keys in loader.epoch_keys() for _, i, _ in keys]
    met = [i for i in bad if i in order]  # drop_last leaves the last 2 of the order out
    assert sorted(loader.bad_indices) == met and loader.skipped == len(met)
    # the replacement is a pure function of (seed, epoch, index): any worker count, same batches
    again = batches(StreamLoader(split, 8, shuffle=True, size=16, workers=0, drop_last=True), 0)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(got, again))


def test_bad_evaluation_images_are_left_out_and_named_by_index(folder):
    good = next((folder / "test" / "ant").glob("*.jpg")).read_bytes()
    (folder / "test" / "ant" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    split = open_image_folder(f"imagefolder:{folder}", False)
    bad = [i for i, f in enumerate(split.files) if Path(f).stem == "truncated"]
    loader = StreamLoader(split, 4, shuffle=False, size=16, workers=1)
    assert sum(len(y) for _, y in loader) == len(split) - 1
    assert loader.bad_indices == bad


def test_stream_names_an_empty_class_folder_as_the_in_memory_loader_does(folder, capsys):
    (folder / "train" / "dog").mkdir()  # a class folder without images: left out, said once
    split = open_image_folder(f"imagefolder:{folder}", True)
    assert split.classes == list(CLASSES)
    err = capsys.readouterr().err
    assert "1 class folder without images left out (dog)" in err and err.count("\n") == 1


def test_a_missing_file_is_one_error_line(folder):
    split = open_image_folder(f"imagefolder:{folder}", True)
    Path(split.files[5]).unlink()
    loader = StreamLoader(split, 8, shuffle=False, size=16, workers=2)
    with pytest.raises(DataError, match=f"cannot read {split.files[5]}") as e:
        list(loader)
    assert "\n" not in str(e.value)


def _die_in_epoch_1(image, gen):
    if _die_in_epoch_1.armed and torch.utils.data.get_worker_info() is not None:
        os.kill(os.getpid(), signal.SIGKILL)
    return image


_die_in_epoch_1.armed = False


def test_a_worker_that_dies_is_one_error_line(packed):
    split = open_shards(packed, True)
    loader = StreamLoader(
        split, 8, shuffle=True, size=16, workers=2, extra_transform=_die_in_epoch_1
    )
    assert len(batches(loader, 0)) == 3
    _die_in_epoch_1.armed = True  # forked workers of a fresh loader inherit it
    try:
        loader = StreamLoader(
            split, 8, shuffle=True, size=16, workers=2, extra_transform=_die_in_epoch_1
        )
        with pytest.raises(
            DataError, match="data-loading worker failed.*resume with --resume"
        ) as e:
            batches(loader, 1)
    finally:
        _die_in_epoch_1.armed = False
    assert "\n" not in str(e.value)


def test_memory_does_not_grow_epoch_to_epoch(tmp_path):
    # 80 images of 600 x 800 (1.4 MB decoded each): the loader must not keep any of them
    rng = np.random.default_rng(2)
    for i in range(80):
        d = tmp_path / "big" / CLASSES[i % 3]
        d.mkdir(parents=True, exist_ok=True)
        pixels = np.full((600, 800, 3), 40 + i, np.uint8) + rng.integers(
            0, 3, (600, 800, 3)
        ).astype(np.uint8)
        Image.fromarray(pixels).save(d / f"{i}.jpg", quality=80)
    split = open_image_folder(f"imagefolder:{tmp_path / 'big'}", True)
    loader = StreamLoader(split, 10, shuffle=True, size=224, workers=0)
    rss, kept = [], []
    gc.collect()
    before = {id(t) for t in _live_tensors()}  # what earlier tests in this process left alive
    for epoch in range(5):
        for _ in loader_epoch(loader, epoch):
            pass
        gc.collect()
        rss.append(_rss_mib())
        kept.append(
            sum(t.nbytes for t in _live_tensors() if t.nbytes >= 100_000 and id(t) not in before)
        )
    # nothing of the size of an image (150 KB at 224 px) outlives its batch, in any epoch
    assert kept == [0] * 5, kept
    # and the process does not grow: the whole set decoded would be 330 MiB more (the floor is
    # compared: malloc returns freed blocks to the system or not as it sees fit, +-30 MiB here)
    assert min(rss[2:]) - min(rss[:2]) < 50, rss


def loader_epoch(loader, epoch):
    loader.set_epoch(epoch)
    for x, _ in loader:
        yield x.shape


def _live_tensors() -> list[torch.Tensor]:
    # type(), not isinstance: isinstance wakes deprecated torch objects' warnings
    return [o for o in gc.get_objects() if type(o) in (torch.Tensor, torch.nn.Parameter)]


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024  # not Linux: the peak


def test_pack_builtin_and_cli(tiny, tmp_path, capsys):
    data_dir = tiny.write(tmp_path / "tiny-files")
    manifest = pack_builtin("tiny", tmp_path / "shards" / "tiny", root=data_dir)
    assert manifest["channels"] == 1 and manifest["splits"]["test"]["count"] == 12
    split = open_shards(tmp_path / "shards" / "tiny", True)
    assert split.side == 8  # small images train at their own size by default
    x = split.images[3]
    assert x.shape == (1, 8, 8) and torch.equal(
        x[0], torch.from_numpy(tiny.arrays["train-images-idx3-ubyte"][3])
    )
    assert [p["name"] for p in list_packed(tmp_path / "shards")] == ["tiny"]
    assert cli.main(["data", "list", "--shards", str(tmp_path / "shards")]) == 0
    assert "shards:" in capsys.readouterr().out
    code = cli.main(["data", "pack", str(tmp_path / "photos-none"), str(tmp_path / "x")])
    assert code != 0


def test_cli_pack_folder(folder, tmp_path, capsys):
    (folder / "train" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 nothing")
    assert cli.main(["data", "pack", str(folder), str(tmp_path / "out"), "--max-side", "30"]) == 0
    out = capsys.readouterr().out
    assert "24 train, 9 test in 2 shards, 1 unreadable file left out" in out  # one of each
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert max(manifest["image_size"]["max"]) <= 30  # larger ones re-encoded
    with tarfile.open(tmp_path / "out" / manifest["splits"]["train"]["shards"][0]["file"]) as tar:
        assert any(m.name.endswith(".png") for m in tar) and any(
            m.name.endswith(".jpg") for m in tar
        )


def test_in_memory_commands_name_a_packed_set_for_what_it_is(packed):
    from resnetlab.data import load_dataset
    from resnetlab.errors import UsageError

    with pytest.raises(UsageError, match="packed set, which `resnetlab train` streams"):
        load_dataset(f"shards:{packed}")


@pytest.mark.parametrize(
    "augment", [Augment(), Augment(erasing=1.0, flip=True)], ids=["plain", "erasing"]
)
def test_batches_passed_over_on_resume_are_not_read_and_the_rest_are_unchanged(packed, augment):
    """With erasing too: the boxes of a batch after the skipped ones are that batch's own."""
    split = open_shards(packed, True)
    loader = StreamLoader(split, 8, shuffle=True, size=16, workers=0, augment=augment)
    whole = batches(loader, 1)
    read = []
    split.read = lambda i, read_bytes=split.read: read.append(i) or read_bytes(i)
    loader.set_epoch(1)
    loader.skip_next(2)
    resumed = list(loader)
    assert resumed[:2] == [(None, None), (None, None)]
    assert torch.equal(resumed[2][0], whole[2][0]) and torch.equal(resumed[2][1], whole[2][1])
    assert sorted(read) == sorted(int(i) for _, i, _ in list(loader.epoch_keys())[2])
    assert len(batches(loader, 1)) == 3  # the next pass reads everything again


@pytest.mark.parametrize("url", ["s3://bucket/sets/x", "https://host/sets/x/"])
def test_a_url_is_kept_whole_where_a_local_folder_is_read(url):
    """The readers of a local set (`data list --shards`) keep a URL whole (Path would fold its
    "//" into "/") and say what they read, without advising to pack a dataset there."""
    from resnetlab.data.shards import read_manifest

    with pytest.raises(UsageError) as e:
        read_manifest(url)
    message = str(e.value)
    assert f"shards:{url}:" in message and "local folder" in message and "\n" not in message
    assert "data pack" not in message  # packing there would not help


def test_a_url_of_a_protocol_not_installed_is_one_line_kept_whole():
    """shards:s3://... goes to fsspec (data/remote.py), not to a folder named s3:/bucket; without
    s3fs it is one line naming the package, before any network."""
    with pytest.raises(UsageError) as e:
        open_shards("s3://bucket/sets/x", True)
    message = str(e.value)
    assert "s3://bucket/sets/x" in message and "pip install s3fs" in message
    assert "\n" not in message and "s3:/bucket" not in message.replace("s3://", "")


def test_the_processes_of_a_machine_share_the_shard_hashing(packed, monkeypatch):
    """Each of n processes hashes every n-th shard (at once, none waiting on the others), and
    together they hash each shard once."""
    from resnetlab.data import shards

    hashed, real = [], shards._sha256
    monkeypatch.setattr(shards, "_sha256", lambda p: hashed.append(Path(p).name) or real(p))
    monkeypatch.setattr(shards, "_read_stamps", dict)  # nothing verified before
    monkeypatch.setattr(shards, "_write_stamps", lambda stamps: None)
    names = sorted(s["file"] for s in shards.read_manifest(packed)["splits"]["train"]["shards"])
    assert len(names) >= 3
    per_process = []
    for k in range(2):
        hashed.clear()
        assert len(open_shards(packed, True, share=(k, 2))) == 24  # every sample, all the same
        per_process.append(sorted(hashed))
    assert all(per_process) and not set(per_process[0]) & set(per_process[1])
    assert sorted(per_process[0] + per_process[1]) == names


def test_every_pillow_plugin_is_imported_before_the_workers_fork():
    """A DataLoader worker never imports a Pillow plugin itself: a lazy import after the fork can
    wait forever on an import lock another thread held at the fork (a 2-process streamed run once
    hung so, its worker in Image.open's preinit). Importing the decoder initialises them all."""
    import subprocess
    import sys

    code = "import resnetlab.data.decode, PIL.Image as I; print(I._initialized)"
    src = str(Path(__file__).resolve().parents[2] / "src")
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=src),
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout.strip() == "2", done.stderr
