"""Shards over HTTP (issue 36): a training run from nginx, which is stopped for 10 s mid-epoch,
against the same run from the local copy.

Packs a Fashion-MNIST subset (3,000 + 3,000 images) into ~60 shards of ~400 kB, serves it from a
private Debian nginx on 127.0.0.1 (the configuration .ci/nginx writes, on another port), trains
1 epoch from the local path, then the same run from http:// with a cache of ~10 shards and
`--shard-order shards`; once 3 shards are cached nginx is stopped, and started again 10 s later.
Prints whether the run completed, when, the weights' bit-identity and the shard GETs in nginx's
access log. The default backoff (0.5, 1, 2, 4, 8 s) is what rides out the outage.

Usage: eval "$(.ci/nginx)"; OMP_NUM_THREADS=1 python benchmarks/http_outage.py
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from resnetlab.data.shards import pack_builtin
from resnetlab.weights import load_weights

OUTAGE_S = 10.0
FLAGS = [
    "--epochs", "1", "--batch-size", "64", "--workers", "1", "--shard-order", "shards",
    "--model", "resnet20", "--model-kwargs", '{"width": 4}', "--val-split", "0",
    "--device", "cpu", "--seed", "1", "--no-epoch-test",
]  # fmt: skip


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="resnetlab-http-outage."))
    work.chmod(0o755)  # nginx's workers (nobody, under root) read the set here
    packed = work / "www" / "fm"
    pack_builtin("fashion-mnist", packed, subset=3000, shard_bytes=400_000)
    for folder in (work / "www", packed):
        folder.chmod(0o755)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = Path(os.environ["RESNETLAB_TEST_NGINX_CONF"]).read_text()
    conf = re.sub(r"/tmp/resnetlab-nginx\.\w+", str(work), conf)
    conf = re.sub(r"listen 127\.0\.0\.1:\d+", f"listen 127.0.0.1:{port}", conf)
    (work / "nginx.conf").write_text(conf)
    nginx = [os.environ.get("RESNETLAB_TEST_NGINX_BIN", "/usr/sbin/nginx"), "-c"]
    nginx += [str(work / "nginx.conf"), "-p", str(work), "-e", str(work / "error.log")]
    subprocess.run(nginx, check=True)
    try:
        train = ["resnetlab", "train", *FLAGS]
        subprocess.run([*train, "--data", f"shards:{packed}", "--out", work / "local"], check=True)
        cache = work / "cache"
        run = subprocess.Popen(
            [*train, "--data", f"shards:http://127.0.0.1:{port}/fm", "--out", work / "http"]
            + ["--cache", cache, "--cache-size", "4M"]
        )
        while len(list(cache.glob("*.tar"))) < 3 and run.poll() is None:
            time.sleep(0.02)
        subprocess.run([*nginx, "-s", "stop"], check=True)
        stopped = time.monotonic()
        print(f"nginx stopped with {len(list(cache.glob('*.tar')))} shards cached")
        time.sleep(OUTAGE_S)
        subprocess.run(nginx, check=True)
        print(f"nginx started again after {time.monotonic() - stopped:.1f} s")
        code = run.wait()
        print(
            f"run from http:// exit status {code}, {time.monotonic() - stopped:.1f} s after the stop"
        )
        a, _ = load_weights(work / "local" / "model.safetensors")
        b, _ = load_weights(work / "http" / "model.safetensors")
        print("weights bit-identical to the local run:", all(torch.equal(a[k], b[k]) for k in a))
        gets = re.findall(r"GET /fm/\S+\.tar", (work / "access.log").read_text())
        print(f"shard GETs {len(gets)} ({len(set(gets))} shards)")
    finally:
        subprocess.run([*nginx, "-s", "stop"], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
