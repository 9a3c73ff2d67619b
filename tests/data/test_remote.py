"""Packed sets read from elsewhere (data/remote.py) through a bounded local cache, the manifest
as untrusted input (data/manifest.py) and the shard reading order (data/order.py).

The HTTP tests use a real nginx on 127.0.0.1 (.ci/nginx, started by .ci/run: the
RESNETLAB_TEST_NGINX_* variables) and count the shard requests in its access log; they skip
without it (an error under RESNETLAB_TEST_STRICT=1, as in CI). Nothing mocks HTTP.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import torch

from resnetlab import cli
from resnetlab.data import remote
from resnetlab.data.augment import stream_seed
from resnetlab.data.order import epoch_order
from resnetlab.data.shards import MANIFEST, open_shards, open_stream, pack_builtin
from resnetlab.data.stream import StreamLoader
from resnetlab.errors import DataError, UsageError
from resnetlab.inference.eval_run import evaluate_run
from resnetlab.report.observer import Observer
from resnetlab.train import make_config, train
from resnetlab.weights import load_weights

NGINX = "RESNETLAB_TEST_NGINX_URL"


class Served:
    """The nginx .ci/nginx started: publish a packed set, count the requests for its shards."""

    def __init__(self) -> None:
        self.url = os.environ[NGINX].rstrip("/")
        self.root = Path(os.environ["RESNETLAB_TEST_NGINX_ROOT"])
        self.log = Path(os.environ["RESNETLAB_TEST_NGINX_LOG"])

    def publish(self, packed: Path) -> str:
        name = f"set-{uuid.uuid4().hex[:12]}"  # tests running side by side share the server
        shutil.copytree(packed, self.root / name)
        return f"{self.url}/{name}"

    def mark(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0

    def settle(self) -> None:
        """Wait until every request answered so far is in the log. nginx writes a request's line
        after its response, so a client that has its answer (or refused it at the headers) may
        read the log before the line is there (seen once in CI). One worker answers and logs in
        turn (.ci/nginx): once one more request's line is in, every earlier one is."""
        token = f"/settled-{uuid.uuid4().hex}"
        try:
            urllib.request.urlopen(self.url + token, timeout=5).close()
        except urllib.error.HTTPError as e:  # 404, as meant
            e.close()
        deadline = time.monotonic() + 10
        while token.encode() not in self.log.read_bytes():
            assert time.monotonic() < deadline, f"nginx did not log {token} within 10 s"
            time.sleep(0.01)

    def shard_requests(self, url: str, since: int = 0) -> list[tuple[str, int]]:
        """(file, bytes sent) of each GET of a shard of the set at `url` logged after `since`."""
        prefix = "/" + url.rsplit("/", 1)[1] + "/"
        self.settle()
        with open(self.log, "rb") as fh:
            fh.seek(since)
            text = fh.read().decode()
        found = re.findall(r'"GET (\S+) HTTP/[\d.]+" (\d+) (\d+)', text)
        return [
            (path[len(prefix) :], int(sent))
            for path, status, sent in found
            if path.startswith(prefix) and path.endswith(".tar")
        ]


@pytest.fixture
def served() -> Served:
    if not os.environ.get(NGINX):
        pytest.skip(
            f'{NGINX} is not set: start a throw-away nginx with eval "$(.ci/nginx)" (.ci/run does)'
        )
    return Served()


@pytest.fixture
def packed(tiny, tmp_path) -> Path:
    """The tiny dataset (40 + 12 images of 8 x 8) packed into shards of about 5 images."""
    pack_builtin("tiny", tmp_path / "packed", root=tiny.write(tmp_path / "idx"), shard_bytes=8000)
    return tmp_path / "packed"


def shard_files(packed: Path) -> list[str]:
    manifest = json.loads((packed / MANIFEST).read_text())
    return [s["file"] for split in manifest["splits"].values() for s in split["shards"]]


def epoch(loader, e: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(e)
    return [(x.clone(), y.clone()) for x, y in loader]


def same(a, b) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(a, b)
    )


# --- over HTTP, from nginx -----------------------------------------------------------------

RUN = dict(
    model="resnet20",
    model_kwargs={"width": 4},
    batch_size=8,
    epochs=2,
    seed=5,
    val_split=0,
    epoch_test=True,
    tta="none",
    progressive_resize=0,
    init="default",
    amp=False,
    channels_last=False,
    device="cpu",
    workers=1,
)


class EpochMarks(Observer):
    """The access log's size at each epoch's end."""

    def __init__(self, served: Served) -> None:
        self.served, self.marks = served, []

    def on_epoch_end(self, state, row, is_best) -> None:
        self.marks.append(self.served.mark())


def test_a_run_over_http_is_the_local_run_and_its_second_epoch_reads_nothing(
    served, packed, tmp_path
):
    url = served.publish(packed)
    start = served.mark()
    local = make_config("quick", data=f"shards:{packed}", **RUN)
    train(local, out=tmp_path / "local", verbose=False)
    over_http = make_config(
        "quick", data=f"shards:{url}", cache=str(tmp_path / "cache"), cache_size="1G", **RUN
    )
    marks = EpochMarks(served)
    train(over_http, out=tmp_path / "http", verbose=False, observers=[marks])
    a, _ = load_weights(tmp_path / "local" / "model.safetensors")
    b, _ = load_weights(tmp_path / "http" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    first = served.shard_requests(url, start)
    assert sorted(f for f, _ in first) == sorted(shard_files(packed))  # each shard once
    assert sum(n for _, n in first) == sum(p.stat().st_size for p in packed.glob("*.tar"))
    assert len(marks.marks) == 2 and served.shard_requests(url, marks.marks[0]) == []


def disk_use(folder: Path) -> int:
    total = 0
    for p in folder.iterdir():
        try:
            total += p.stat().st_size
        except FileNotFoundError:  # removed between the listing and the stat
            pass
    return total


def test_a_cache_of_a_quarter_of_the_set_stays_within_its_bound(served, packed, tmp_path):
    url = served.publish(packed)
    sizes = [p.stat().st_size for p in packed.glob("*.tar")]
    limit = sum(sizes) // 4
    cache = tmp_path / "cache"
    split = open_stream(f"shards:{url}", True, cache=cache, cache_size=limit)
    here = open_shards(packed, True)
    peak, done = [0], threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], disk_use(cache))
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        order = dict(shard_order="shards", shard_window=1)
        over_http = StreamLoader(split, 8, shuffle=True, workers=1, seed=2, **order)
        local = StreamLoader(here, 8, shuffle=True, workers=0, seed=2, **order)
        for e in range(2):
            assert same(epoch(over_http, e), epoch(local, e))
    finally:
        done.set()
        watcher.join()
    assert 0 < peak[0] <= limit + max(sizes), (peak[0], limit)
    assert len(served.shard_requests(url)) > len(split.files)  # evicted, fetched again


def test_the_next_shards_are_fetched_ahead_and_no_more(served, packed, tmp_path):
    url = served.publish(packed)
    cache = tmp_path / "cache"
    split = open_stream(f"shards:{url}", True, cache=cache)
    loader = StreamLoader(split, 4, shuffle=True, workers=0, shard_order="shards", shard_window=1)
    batches = iter(loader)
    next(batches)  # 4 samples of one shard read
    deadline = time.monotonic() + 30
    while len(list(cache.glob("*.tar"))) < 1 + remote.AHEAD and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # anything more would have arrived by now
    assert len(list(cache.glob("*.tar"))) == 1 + remote.AHEAD
    assert len(served.shard_requests(url)) == 1 + remote.AHEAD


def test_a_shard_with_a_wrong_sha256_is_refused_in_one_line_naming_it(served, packed, tmp_path):
    url = served.publish(packed)
    name = shard_files(packed)[1]
    served_copy = served.root / url.rsplit("/", 1)[1] / name
    data = bytearray(served_copy.read_bytes())
    data[600] ^= 0xFF  # same size, other bytes
    served_copy.write_bytes(bytes(data))
    cache = tmp_path / "cache"
    split = open_stream(f"shards:{url}", True, cache=cache, cache_size="1G")
    loader = StreamLoader(split, 40, shuffle=True, workers=0)
    with pytest.raises(DataError, match=f"shard {re.escape(url)}/{name}: its sha256 differs") as e:
        epoch(loader, 0)
    assert "\n" not in str(e.value)
    assert [p.name for p in cache.iterdir() if p.name != ".lock"] != []  # the others arrived
    kept = {p.name[:-4] for p in cache.glob("*.tar")}
    sha = json.loads((packed / MANIFEST).read_text())["splits"]["train"]["shards"][1]["sha256"]
    assert sha not in kept and not list(cache.glob("*.tmp"))


def test_a_page_served_in_place_of_a_shard_is_refused_at_once(served, packed, tmp_path):
    """200 with an HTML page (a login or error page): its Content-Length is not the shard's, and
    no retry mends that; it was taken for a connection cut short and fetched ATTEMPTS times."""
    url = served.publish(packed)
    name = shard_files(packed)[0]
    (served.root / url.rsplit("/", 1)[1] / name).write_bytes(b"<html>sign in</html>")
    split = open_stream(f"shards:{url}", True, cache=tmp_path / "cache")
    split.source.backoff_s = 0.0
    start = served.mark()
    with pytest.raises(DataError, match=f"{re.escape(name)}: the server sends 20 bytes") as e:
        split.read(0)
    assert "\n" not in str(e.value)
    assert served.shard_requests(url, start) == [(name, 20)]


def test_a_shard_that_cannot_be_fetched_is_not_fetched_again_for_each_sample(
    packed, tmp_path, monkeypatch
):
    """Every sample of a shard asks for it: after one failed fetch (its retries spent), the
    others fail at once with the same line, not after as many tries and backoff each (a
    refused shard was downloaded again for each of its samples: hundreds of times)."""
    split = open_stream(f"shards:file://{packed}", True, cache=tmp_path / "cache")
    split.source.url = f"http://127.0.0.1:{free_port()}"  # nothing listens: a transient error
    split.source.backoff_s = 0.0
    opened = []
    real_open = remote._open
    monkeypatch.setattr(remote, "_open", lambda url: opened.append(url) or real_open(url))
    same_shard = [i for i in range(len(split)) if split.entries[i, 0] == 0][:2]
    errors = []
    for i in same_shard:
        with pytest.raises(DataError, match="cannot fetch shard http://127.0.0.1") as e:
            split.read(i)
        errors.append(str(e.value))
    assert len(opened) == remote.ATTEMPTS and errors[0] == errors[1]


def test_a_cache_that_cannot_be_written_is_one_line_naming_it(packed, tmp_path):
    """A read-only or full cache disk (here: its lock cannot be opened, which root cannot
    chmod away) is one DataError line with what to do, not an OSError traceback."""
    cache = tmp_path / "cache"
    split = open_stream(f"shards:file://{packed}", True, cache=cache)
    (cache / ".lock").mkdir()
    with pytest.raises(DataError, match=f"into the cache {re.escape(str(cache))} .*--cache") as e:
        split.read(0)
    assert "\n" not in str(e.value)


def test_eval_of_a_run_over_a_url_reads_through_the_run_s_cache(packed, tmp_path, monkeypatch):
    """`resnetlab eval RUN` fetched the test shards again into the default cache (maybe another,
    smaller disk, under another bound) instead of the run's --cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home-cache"))
    cache = tmp_path / "cache"
    cfg = make_config(
        "quick", data=f"shards:file://{packed}", cache=str(cache), **dict(RUN, epochs=1, workers=0)
    )
    train(cfg, out=tmp_path / "run", verbose=False)
    shutil.rmtree(cache)
    evaluate_run(tmp_path / "run")
    test_shards = json.loads((packed / MANIFEST).read_text())["splits"]["test"]["shards"]
    assert {p.name for p in cache.glob("*.tar")} == {f"{s['sha256']}.tar" for s in test_shards}
    assert not list(remote.default_cache().glob("*.tar"))


def test_data_pack_into_a_url_is_refused_not_written_to_a_local_http_folder(
    tmp_path, monkeypatch, capsys
):
    """`data pack SRC http://host/set` packed into ./http:/host/set and printed `--data
    shards:http:/host/set` as the command to train with."""
    monkeypatch.chdir(tmp_path)
    assert (
        cli.main(["data", "pack", "fashion-mnist", "http://127.0.0.1:9/set", "--subset", "8"]) == 2
    )
    err = capsys.readouterr().err
    assert "data pack writes a local folder, not http://127.0.0.1:9/set" in err
    assert list(tmp_path.iterdir()) == []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_nginx(run: list[str], port: int) -> None:
    """`nginx -s stop` only signals the master, which then closes its sockets: wait until the
    port refuses connections, so that what follows really finds no server."""
    subprocess.run([*run, "-s", "stop"], check=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except OSError:
            return
        time.sleep(0.05)
    raise AssertionError(f"nginx still answers on port {port} 10 s after -s stop")


def test_nginx_stopped_mid_epoch_is_ridden_out_and_no_sample_skipped(
    served, packed, tmp_path, monkeypatch
):
    """A private nginx (the shared one serves other tests): stopped after the first batch,
    started again 2 s later; the epoch completes with every sample, as read locally."""
    nginx = os.environ["RESNETLAB_TEST_NGINX_BIN"]
    home = Path(tempfile.mkdtemp(prefix="resnetlab-nginx-test."))  # tmp_path is 0700: nginx's
    home.chmod(0o755)  # workers (nobody) could not read it
    shutil.copytree(packed, home / "www" / "set")
    for folder in (home / "www", home / "www" / "set"):
        folder.chmod(0o755)
    conf = Path(os.environ["RESNETLAB_TEST_NGINX_CONF"]).read_text()
    port = free_port()
    conf = re.sub(r"/tmp/resnetlab-nginx\.\w+", str(home), conf)
    conf = re.sub(r"listen 127\.0\.0\.1:\d+", f"listen 127.0.0.1:{port}", conf)
    (home / "nginx.conf").write_text(conf)
    run = [nginx, "-c", str(home / "nginx.conf"), "-p", str(home), "-e", str(home / "error.log")]
    subprocess.run(run, check=True)
    restarted = threading.Timer(2.0, subprocess.run, (run,))
    try:
        monkeypatch.setattr(remote, "BACKOFF_S", 0.2)  # 0.2 + 0.4 + ... + 3.2 s: 6.2 s in all
        monkeypatch.setattr(remote, "AHEAD", 0)  # nothing fetched ahead of the outage
        split = open_stream(f"shards:http://127.0.0.1:{port}/set", True, cache=tmp_path / "c")
        order = dict(shard_order="shards", shard_window=1, seed=4)
        loader = StreamLoader(split, 4, shuffle=True, workers=0, **order)
        batches = []
        for i, (x, y) in enumerate(loader):
            batches.append((x.clone(), y.clone()))
            if i == 0:
                stop_nginx(run, port)
                stopped = time.monotonic()
                restarted.start()
        restarted.join()
        assert time.monotonic() - stopped > 1.5  # the epoch did wait for the server
        local = StreamLoader(open_shards(packed, True), 4, shuffle=True, workers=0, **order)
        assert same(batches, epoch(local, 0))
        stop_nginx(run, port)
        monkeypatch.setattr(remote, "ATTEMPTS", 2)
        with pytest.raises(DataError, match=r"cannot fetch .*manifest\.json \(.*2 tries\)"):
            open_stream(f"shards:http://127.0.0.1:{port}/set", True, cache=tmp_path / "c2")
    finally:
        restarted.cancel()
        if restarted.is_alive():
            restarted.join()
        subprocess.run([*run, "-s", "stop"], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


# --- without a server ----------------------------------------------------------------------


def test_fsspec_protocols_are_read_through_the_cache(packed, tmp_path):
    """file:// goes through fsspec as s3:// or gs:// would: same batches as the local path."""
    split = open_stream(f"shards:file://{packed}", True, cache=tmp_path / "cache")
    assert split.name == f"shards:file://{packed}"  # not mangled into file:/...
    a = epoch(StreamLoader(split, 8, shuffle=True, workers=1), 1)
    b = epoch(StreamLoader(open_shards(packed, True), 8, shuffle=True, workers=0), 1)
    assert same(a, b)
    assert len(list((tmp_path / "cache").glob("*.tar"))) == len(split.files)


def test_a_protocol_without_its_package_is_one_line_naming_the_install():
    missing = next(
        (p, pkg)
        for p, pkg in (("gs", "gcsfs"), ("s3", "s3fs"), ("abfs", "adlfs"), ("oci", "ocifs"))
        if importlib.util.find_spec(pkg) is None
    )
    with pytest.raises(UsageError, match=f"pip install {missing[1]}") as e:
        open_stream(f"shards:{missing[0]}://bucket/set", True)
    assert "\n" not in str(e.value)


def test_cache_sizes(tmp_path):
    assert remote.parse_size("2G") == 2 * 2**30 and remote.parse_size("500m") == 500 * 2**20
    assert remote.parse_size("1.5KiB") == 1536 and remote.parse_size("4096") == 4096
    for bad in ("", "-1G", "0", "2X", "G"):
        with pytest.raises(UsageError, match="--cache-size takes a size"):
            remote.parse_size(bad)


@pytest.mark.parametrize(
    "edit,what",
    [
        (lambda s: s.update(file="../escape.tar"), "names the file '../escape.tar'"),
        (lambda s: s.update(file="/etc/passwd"), "names the file '/etc/passwd'"),
        (lambda s: s.update(file="http://elsewhere/x.tar"), "names the file 'http://"),
        (lambda s: s.update(file=".."), "names the file '..'"),
        (lambda s: s.update(bytes=2**41), "has bytes"),
        (lambda s: s.update(bytes=-5), "has bytes"),
        (lambda s: s.update(count=s["count"] + 1), "has count"),
        (lambda s: s.update(members=[[10**9, 4, 0]], count=1), "has the member"),
        (lambda s: s["members"][0].__setitem__(2, 7), "has the member"),
        (lambda s: s.update(sha256="abc"), "no sha256"),
        (lambda s: s.pop("members"), "has no members"),
    ],
)
def test_a_hostile_manifest_is_refused_in_one_line(packed, edit, what):
    manifest = json.loads((packed / MANIFEST).read_text())
    edit(manifest["splits"]["train"]["shards"][0])
    (packed / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=re.escape(what)) as e:
        open_shards(packed, False)  # the whole manifest is checked, whichever split is asked for
    assert "\n" not in str(e.value) and "split train, shard 0" in str(e.value)


def test_shard_order_is_a_pure_function_reading_each_sample_once_window_by_window():
    files = torch.arange(10).repeat_interleave(7).numpy()  # 10 shards of 7 samples
    order = epoch_order(files, 3, 1, "shards", 2)
    assert torch.equal(order, epoch_order(files, 3, 1, "shards", 2))
    assert sorted(order.tolist()) == list(range(70))
    windows = files[order.numpy()].reshape(5, 14)  # 5 windows of 2 shards, one after another
    assert all(len(set(w)) == 2 for w in windows.tolist())
    assert len({s for w in windows.tolist() for s in w}) == 10
    assert not torch.equal(order, epoch_order(files, 3, 2, "shards", 2))  # another epoch
    assert not torch.equal(order, epoch_order(files, 4, 1, "shards", 2))  # another seed
    inside = files[order.numpy()][:14].tolist()
    assert inside != sorted(inside)  # shuffled within the window
    # the default order is the one runs used before the option (resumes stay exact)
    gen = torch.Generator().manual_seed(stream_seed(3, 1, "order"))
    assert torch.equal(epoch_order(files, 3, 1), torch.randperm(70, generator=gen))
    with pytest.raises(UsageError, match="--shard-window"):
        epoch_order(files, 3, 1, "shards", 0)


def test_shard_order_is_shared_by_processes_and_resumes_inside_an_epoch(packed):
    split = open_shards(packed, True)
    order = dict(shard_order="shards", shard_window=2, seed=7)
    whole = epoch(StreamLoader(split, 8, shuffle=True, workers=0, **order), 1)
    ranks = [
        epoch(StreamLoader(split, 8, shuffle=True, workers=0, rank=r, world_size=2, **order), 1)
        for r in (0, 1)
    ]
    for i, (x, y) in enumerate(whole):  # each global batch, split between the processes
        assert torch.equal(torch.cat([ranks[0][i][0], ranks[1][i][0]]), x)
        assert torch.equal(torch.cat([ranks[0][i][1], ranks[1][i][1]]), y)
    resumed = StreamLoader(split, 8, shuffle=True, workers=0, **order)
    resumed.set_epoch(1)
    resumed.skip_next(2)
    rest = [(x, y) for x, y in resumed][2:]
    assert same(rest, whole[2:])
