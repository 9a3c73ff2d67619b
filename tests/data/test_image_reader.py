"""One image reader (data/decode.py) for every path: a zoo of the files a user's own photo folder
holds, decoded by packing + shards, --stream, the in-memory loader and predict, must give the same
pixels; packing leaves bad files out and never leaves a half-written set; a folder of class
folders without test/ gets a held-out test split that trains as printed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

Image = pytest.importorskip("PIL.Image")
pytest.importorskip("webdataset")

from resnetlab import cli  # noqa: E402
from resnetlab.data import decode, load_dataset  # noqa: E402
from resnetlab.data.shards import (  # noqa: E402
    MANIFEST,
    open_image_folder,
    open_shards,
    pack_folder,
)
from resnetlab.errors import UsageError  # noqa: E402
from resnetlab.inference.images import load_image  # noqa: E402

SIDE = 24  # every zoo image is SIDE x SIDE: the in-memory loader keeps it at full size


def _pixels(seed: int, channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 200, SIDE, dtype=np.float64)[None, :, None]
    noise = rng.integers(0, 55, (SIDE, SIDE, channels))
    return (base + noise).astype(np.uint8)


def write_zoo(folder: Path) -> list[str]:
    """The zoo's good files in `folder` (file names, in the order a loader lists them)."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(_pixels(1))
    rgb.save(folder / "a-rgb.jpg", quality=90)
    Image.fromarray(_pixels(2, 1)[..., 0]).save(folder / "b-grey.jpg")
    rgb.save(folder / "c-progressive.jpg", progressive=True, quality=85)
    rgb.convert("CMYK").save(folder / "d-cmyk.jpg")
    Image.fromarray(_pixels(3)).save(folder / "e-rgb8.png")
    deep = (_pixels(4, 1)[..., 0].astype(np.uint16) * 257).astype(np.uint16)
    Image.fromarray(deep).save(folder / "f-grey16.png")  # mode I;16: what 16-bit grey reads as
    rgba = np.dstack([np.full((SIDE, SIDE, 3), 250, np.uint8), np.zeros((SIDE, SIDE), np.uint8)])
    rgba[6:18, 6:18, 3] = 255  # a shape only the alpha channel draws; hidden white elsewhere
    Image.fromarray(rgba, "RGBA").save(folder / "g-rgba.png")
    palette = Image.fromarray(_pixels(5)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.save(folder / "h-palette.png", transparency=0)
    Image.fromarray(_pixels(6)).save(folder / "i-image.bmp")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to display
    Image.fromarray(_pixels(7)).save(folder / "j-exif.jpg", exif=exif)
    Image.fromarray(_pixels(8)).save(folder / "k-café-日本.png")
    return sorted(p.name for p in folder.iterdir())


def write_truncated(path: Path) -> None:
    """A JPEG whose header parses and whose data is cut: only a full decode finds it."""
    data = (path.parent / "a-rgb.jpg").read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


@pytest.fixture
def zoo(tmp_path) -> Path:
    """photos/train/{one,two}/ and photos/test/one/: the zoo in each, good files only."""
    root = tmp_path / "photos"
    for where in ("train/one", "train/two", "test/one"):
        write_zoo(root / where)
    return root


def test_every_path_reads_the_same_pixels(zoo, tmp_path):
    names = write_zoo(tmp_path / "scratch")
    files = [zoo / "train" / c / n for c in ("one", "two") for n in names]
    predicted = [load_image(p, 3) for p in files]  # predict / explain
    in_memory = load_dataset(f"imagefolder:{zoo}")
    streamed = open_image_folder(f"imagefolder:{zoo}", True)
    pack_folder(zoo, tmp_path / "packed", workers=1)
    packed = open_shards(tmp_path / "packed", True)
    assert len(in_memory) == len(streamed) == len(packed) == len(files)
    import webdataset  # the shards are what WebDataset's own reader reads, in the same order

    shards = [str(p) for p in sorted((tmp_path / "packed").glob("train-*.tar"))]
    read = [s.get("jpg", s.get("png")) for s in webdataset.WebDataset(shards, shardshuffle=False)]
    assert read == [packed.read(i) for i in range(len(packed))]
    for i, path in enumerate(files):
        views = {
            "in memory": in_memory.images[i],
            "--stream": decode.decode_image(streamed.read(i), 3),
            "shards": decode.decode_image(packed.read(i), 3),
        }
        for where, x in views.items():
            diff = (x.int() - predicted[i].int()).abs().max().item()
            assert diff == 0, f"{path.name}: {where} differs from predict by {diff}"
    by_name = dict(zip([p.name for p in files], predicted, strict=False))
    assert by_name["f-grey16.png"].float().mean() < 250  # scaled to 8 bits, not clipped to white
    rgba = by_name["g-rgba.png"]
    assert rgba[:, 0, 0].tolist() == [0, 0, 0] and (rgba[:, 6:18, 6:18] == 250).all()
    assert tuple(by_name["j-exif.jpg"].shape) == (3, SIDE, SIDE)
    exif_read = by_name["j-exif.jpg"].permute(1, 2, 0).numpy().astype(int)
    as_stored = np.abs(exif_read - _pixels(7)).mean()
    rotated = np.abs(exif_read - np.rot90(_pixels(7), -1)).mean()
    assert as_stored < rotated / 2  # EXIF orientation not applied (README), on every path


def test_pack_leaves_bad_files_out_lists_them_and_names_empty_class_folders(zoo, tmp_path, capsys):
    write_truncated(zoo / "train" / "one" / "z-truncated.jpg")
    (zoo / "train" / "empty").mkdir()
    (zoo / "train" / "two" / "notes.txt").write_text("not an image")
    out = tmp_path / "packed"
    assert cli.main(["data", "pack", str(zoo), str(out), "--workers", "2"]) == 0
    captured = capsys.readouterr()
    assert "1 unreadable file left out" in captured.out
    assert "empty" in captured.err and "without images" in captured.err
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["skipped"] == 1
    assert [Path(e["file"]).name for e in manifest["left_out"]] == ["z-truncated.jpg"]
    good = len(write_zoo(tmp_path / "scratch"))  # the .bmp among them: read, not ignored
    assert manifest["splits"]["train"]["class_counts"] == [good, good]
    assert manifest["classes"] == ["one", "two"]
    pixels = np.stack(
        [decode.read_image((zoo / "train" / c / n).read_bytes(), 3) for c in ("one", "two")
         for n in sorted(os.listdir(zoo / "train" / c)) if n.endswith((".jpg", ".png", ".bmp"))
         and n != "z-truncated.jpg"]
    ).astype(np.float64) / 255  # fmt: skip
    expected = pixels.mean(axis=(1, 2)).mean(0)  # each image weighs the same
    assert np.allclose(manifest["mean"], expected, atol=1e-4)


def test_a_failed_pack_leaves_no_set_at_out(zoo, tmp_path, monkeypatch):
    from resnetlab.data import shards

    calls = []

    def fail_on_second(path, *args):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C midway, after one shard is written
        return index_shard(path, *args)

    index_shard = shards._index_shard
    monkeypatch.setattr(shards, "_index_shard", fail_on_second)
    with pytest.raises(KeyboardInterrupt):
        pack_folder(zoo, tmp_path / "out", shard_bytes=2_000)
    assert len(calls) == 2 and not (tmp_path / "out").exists()
    assert sorted(os.listdir(tmp_path)) == ["photos"]  # the temporary folder is gone too


def test_a_killed_pack_leaves_no_set_and_the_next_one_packs(zoo, tmp_path):
    script = (
        "import os, signal, sys\n"
        "from resnetlab.data import shards\n"
        "index, calls = shards._index_shard, []\n"
        "def kill_on_second(path, *args):\n"
        "    calls.append(path)\n"
        "    if len(calls) == 2:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return index(path, *args)\n"
        "shards._index_shard = kill_on_second\n"
        "shards.pack_folder(sys.argv[1], sys.argv[2], shard_bytes=2_000)\n"
    )
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-c", script, str(zoo), str(out)], capture_output=True, timeout=120
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert not out.exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "photos"]
    assert leftovers and all(n.startswith(".out.partial-") for n in leftovers)
    pack_folder(zoo, out)  # the killed pack's leftovers removed, the set written
    assert (out / MANIFEST).is_file() and sorted(os.listdir(tmp_path)) == ["out", "photos"]


def _class_folders(root: Path, per_class: int = 10) -> Path:
    for c in range(3):
        folder = root / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = (_pixels(10 * c + i) // 3 + 80 * c).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:02d}.{'jpg' if i % 2 else 'png'}")
    return root


def test_a_folder_without_test_holds_out_the_same_split_everywhere(tmp_path):
    root = _class_folders(tmp_path / "photos")
    name = f"imagefolder:{root}"
    pack_folder(root, tmp_path / "packed", test_split=0.2)
    manifest = json.loads((tmp_path / "packed" / MANIFEST).read_text())
    assert manifest["splits"]["test"]["class_counts"] == [2, 2, 2]  # stratified
    pack_folder(root, tmp_path / "again", test_split=0.2, seed=1)
    with pytest.raises(UsageError, match="--test-split 30 is not fewer than the 30 images"):
        pack_folder(root, tmp_path / "all", test_split=30)
    with pytest.raises(UsageError, match="a count .1 or more. or a fraction"):
        pack_folder(root, tmp_path / "none", test_split=0)
    assert not (tmp_path / "all").exists() and not (tmp_path / "none").exists()
    packed = open_shards(tmp_path / "packed", False)
    other_seed = open_shards(tmp_path / "again", False)
    # the default split (0.1: one of each class here) is the same for --stream and in memory
    pack_folder(root, tmp_path / "default")
    default = open_shards(tmp_path / "default", False)
    streamed = open_image_folder(name, False)
    in_memory = load_dataset(name, train=False)
    assert len(default) == len(streamed) == len(in_memory) == 3
    trained = open_image_folder(name, True)  # normalised by the same statistics as the packed set
    assert (trained.mean, trained.std) == (default.mean, default.std)
    for i in range(3):
        x = decode.decode_image(default.read(i), 3)
        assert torch.equal(x, decode.decode_image(streamed.read(i), 3))
        assert torch.equal(x, in_memory.images[i])
    views = [decode.decode_image(s.read(i), 3) for s in (packed, other_seed) for i in range(6)]
    assert any(not torch.equal(a, b) for a, b in zip(views[:6], views[6:], strict=True))  # seeded


def test_pack_then_the_printed_command_trains_and_reports_a_test_figure(tmp_path, capsys):
    root = _class_folders(tmp_path / "photos", per_class=8)
    out = tmp_path / "packed"
    assert cli.main(["data", "pack", str(root), str(out), "--workers", "1"]) == 0
    printed = capsys.readouterr().out.splitlines()[-1]
    assert printed.startswith("train on it with: resnetlab train ")
    command = printed.removeprefix("train on it with: resnetlab ").split()
    tiny = ["--model", "resnet20", "--model-kwargs", '{"width": 4}', "--batch-size", "8"]
    tiny += ["--epochs", "1", "--resize", "16", "--progressive-resize", "0", "--init", "default"]
    tiny += ["--tta", "none", "--no-amp", "--device", "cpu", "--workers", "0"]
    assert cli.main([*command, *tiny, "--out", str(tmp_path / "run")]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["test_count"] == 3 and 0 <= summary["test_acc"] <= 1


def test_jpeg_scales_round_up_to_the_fast_ones(decoded_sizes):
    """3/8, 5/8, 6/8 and 7/8 decode more slowly than a larger scale (benchmarks/decode_scales.py):
    a box that needs 3/8 of an 800 px JPEG is decoded at 1/2, one that needs 5/8 at full size."""
    import io

    buf = io.BytesIO()
    Image.fromarray(
        _pixels(9).repeat(800 // SIDE + 1, 0).repeat(800 // SIDE + 1, 1)[:800, :800]
    ).save(buf, "JPEG")
    whole = (0, 0, 800, 800)
    for out, decoded in ((90, 100), (300, 400), (500, 800), (800, 800)):
        x = decode.decode_box(buf.getvalue(), 3, whole, out)
        assert x.shape == (3, out, out) and decoded_sizes[-1] == (decoded, decoded), (
            out,
            decoded_sizes[-1],
        )


def test_a_folder_without_test_trains_streamed_and_reports_a_test_figure(tmp_path, capsys):
    root = _class_folders(tmp_path / "photos", per_class=8)
    flags = ["--data", f"imagefolder:{root}", "--stream", "--val-split", "2"]
    flags += ["--model", "resnet20", "--model-kwargs", '{"width": 4}', "--batch-size", "8"]
    flags += ["--epochs", "1", "--resize", "16", "--progressive-resize", "0", "--init", "default"]
    flags += ["--tta", "none", "--no-amp", "--device", "cpu", "--workers", "0"]
    assert cli.main(["train", *flags, "--out", str(tmp_path / "run")]) == 0
    assert "held out as the test split" in capsys.readouterr().err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["test_count"] == 3 and 0 <= summary["test_acc"] <= 1
