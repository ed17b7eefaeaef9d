"""download(): a local http.server stands in for download.openmmlab.com."""

from __future__ import annotations

import functools
import hashlib
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from torch import nn

from gcnet.checkpoint import CheckpointError, default_cache_dir, download, load_checkpoint


class _Server:
    def __init__(self, root: Path) -> None:
        self.requests: list[str] = []
        log = self.requests

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:
                log.append(self.path)
                super().do_GET()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)
        self.stopped = False
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server(tmp_path, monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    root = tmp_path / "www"
    root.mkdir()
    srv = _Server(root)
    srv.root = root
    yield srv
    srv.stop()


def _publish(root: Path, stem: str, data: bytes, prefix: str | None = None) -> str:
    """Name the file the original's way: ``<stem>-<first 8 hex of sha256>.pth``."""
    prefix = prefix or hashlib.sha256(data).hexdigest()[:8]
    name = f"{stem}-{prefix}.pth"
    (root / name).write_bytes(data)
    return name


def test_download_verifies_and_caches(server, tmp_path):
    data = bytes(range(256)) * 4000  # ~1 MB, more than one read chunk
    name = _publish(server.root, "weights_20200204", data)
    cache = tmp_path / "cache"
    path = download(f"{server.base}/{name}", cache_dir=cache, progress=False)
    assert path == cache / name and path.read_bytes() == data
    assert sorted(p.name for p in cache.iterdir()) == [name]  # no partial file left
    assert len(server.requests) == 1
    server.stop()  # the second call must not touch the network
    again = download(f"{server.base}/{name}", cache_dir=cache, progress=False)
    assert again == path and len(server.requests) == 1


def test_wrong_sha_prefix_fails_and_leaves_nothing(server, tmp_path):
    data = b"not what the name promises" * 100
    wrong = "00000000" if not hashlib.sha256(data).hexdigest().startswith("00000000") else "11111111"
    name = _publish(server.root, "bad", data, prefix=wrong)
    cache = tmp_path / "cache"
    with pytest.raises(CheckpointError, match=f"sha256 .* does not match {wrong}.*removed"):
        download(f"{server.base}/{name}", cache_dir=cache, progress=False)
    assert list(cache.iterdir()) == []


def test_missing_file_is_a_clear_error(server, tmp_path):
    with pytest.raises(CheckpointError, match="could not fetch .*nothing-12345678.pth"):
        download(f"{server.base}/nothing-12345678.pth", cache_dir=tmp_path / "c", progress=False)
    assert list((tmp_path / "c").iterdir()) == []


def test_default_cache_follows_gcnet_home(monkeypatch, tmp_path):
    monkeypatch.setenv("GCNET_HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home"
    monkeypatch.delenv("GCNET_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "gcnet" / "checkpoints"


def test_load_checkpoint_from_url(server, tmp_path, monkeypatch):
    monkeypatch.setenv("GCNET_HOME", str(tmp_path / "home"))
    src = nn.Linear(3, 2)
    local = tmp_path / "tmp.pth"
    torch.save({"state_dict": src.state_dict(), "meta": {"epoch": 12}}, local)
    name = _publish(server.root, "linear_20210615_161851", local.read_bytes())
    dst = nn.Linear(3, 2)
    assert load_checkpoint(dst, f"{server.base}/{name}") == {"epoch": 12}
    assert torch.equal(dst.weight, src.weight) and torch.equal(dst.bias, src.bias)
    assert (tmp_path / "home" / name).is_file()
