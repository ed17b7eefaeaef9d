"""download(): the one fetch-and-verify path; a local http.server stands in for the real hosts."""

from __future__ import annotations

import functools
import hashlib
import io
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from gcnet.checkpoint import (
    PRETRAINED_URLS,
    CheckpointError,
    default_cache_dir,
    download,
    load_checkpoint,
    resolve_url,
)
from gcnet.config import BackboneConfig
from gcnet.models.backbone import ResNet, load_imagenet_weights


class _Server:
    """Serves ``root``; a path starting ``/truncated/`` announces the whole file but sends half."""

    def __init__(self, root: Path) -> None:
        self.requests: list[str] = []
        log = self.requests

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:
                log.append(self.path)
                if self.path.startswith("/truncated/"):
                    data = (root / self.path[len("/truncated/") :]).read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.close_connection = True
                    return
                super().do_GET()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.stopped = False
        self.thread.start()
        self.root = root
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture(autouse=True)
def hub_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache of the test's own, so the user's cache never answers."""
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    return hub


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    root = tmp_path / "www"
    root.mkdir()
    srv = _Server(root)
    yield srv
    srv.stop()


def _publish(root: Path, stem: str, data: bytes, prefix: str | None = None) -> str:
    """Name the file the original's way: ``<stem>-<first 8 hex of sha256>.pth``."""
    prefix = prefix or hashlib.sha256(data).hexdigest()[:8]
    name = f"{stem}-{prefix}.pth"
    (root / name).write_bytes(data)
    return name


def _wrong_prefix(data: bytes) -> str:
    return "00000000" if not hashlib.sha256(data).hexdigest().startswith("00000000") else "11111111"


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


# ------------------------------------------------------------------ fetching and verifying


def test_download_verifies_and_caches(server, tmp_path):
    data = bytes(range(256)) * 40000  # ~10 MB, more than one read chunk
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
    wrong = _wrong_prefix(data)
    name = _publish(server.root, "bad", data, prefix=wrong)
    cache = tmp_path / "cache"
    url = f"{server.base}/{name}"
    with pytest.raises(CheckpointError) as err:
        download(url, cache_dir=cache, progress=False)
    got = hashlib.sha256(data).hexdigest()[:8]
    assert _one_line(err) == (
        f"download {url}: sha256 mismatch: expected prefix {wrong} (from the file "
        f"name), got {got}; the corrupt download was removed"
    )
    assert list(cache.iterdir()) == []
    # A later call tries again rather than trusting anything left behind.
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        download(url, cache_dir=cache, progress=False)
    assert len(server.requests) == 2


def test_truncated_transfer_leaves_nothing(server, tmp_path):
    name = _publish(server.root, "cut_short", b"0123456789" * 1000)
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        download(f"{server.base}/truncated/{name}", cache_dir=tmp_path / "cache", progress=False)
    assert list((tmp_path / "cache").iterdir()) == []


def test_http_404_is_one_line(server, tmp_path):
    url = f"{server.base}/nothing-12345678.pth"
    with pytest.raises(CheckpointError) as err:
        download(url, cache_dir=tmp_path / "c", progress=False)
    assert _one_line(err).startswith(f"download {url}: HTTP error 404")
    assert list((tmp_path / "c").iterdir()) == []


def test_unreachable_host_is_one_line(server, tmp_path):
    name = _publish(server.root, "offline", b"x" * 100)
    server.stop()  # nothing listens on the port any more
    url = f"{server.base}/{name}"
    with pytest.raises(CheckpointError) as err:
        download(url, cache_dir=tmp_path / "c", progress=False)
    assert _one_line(err).startswith(f"download {url}: could not reach {server.base[len('http://') :]} (")
    assert list((tmp_path / "c").iterdir()) == []


def test_torch_hub_cache_is_reused(server, tmp_path, hub_dir):
    data = b"already fetched by torchvision" * 10
    name = _publish(server.root, "resnet_tiny", data)
    (hub_dir / "checkpoints").mkdir(parents=True)
    (hub_dir / "checkpoints" / name).write_bytes(data)
    path = download(f"{server.base}/{name}", cache_dir=tmp_path / "cache", progress=False)
    assert path == hub_dir / "checkpoints" / name and server.requests == []
    assert not (tmp_path / "cache").exists()


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


# ------------------------------------------------------------------ ImageNet backbones, same path


def _tiny_resnet18() -> ResNet:
    return ResNet(BackboneConfig(depth=18, base_channels=8, pretrained=None))


def test_pretrained_backbone_through_the_same_path(server, tmp_path, monkeypatch):
    monkeypatch.setenv("GCNET_HOME", str(tmp_path / "home"))
    gen = torch.Generator().manual_seed(0)
    state = {
        k: torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
        for k, v in _tiny_resnet18().state_dict().items()
    }
    state["fc.weight"] = torch.zeros(10, 64)  # the classifier torchvision files carry, dropped
    buffer = io.BytesIO()
    torch.save(state, buffer)
    name = _publish(server.root, "resnet18", buffer.getvalue())  # resnet18-<sha8>.pth, torchvision's style
    model = _tiny_resnet18()
    assert load_imagenet_weights(model, f"{server.base}/{name}") == []
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert (tmp_path / "home" / name).is_file() and len(server.requests) == 1

    corrupt = _publish(server.root, "resnet18", buffer.getvalue(), prefix=_wrong_prefix(buffer.getvalue()))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_imagenet_weights(_tiny_resnet18(), f"{server.base}/{corrupt}")
    assert not (tmp_path / "home" / corrupt).exists()


# ------------------------------------------------------------------ names


def test_resolve_url():
    # The table's own names are pinned in test_checkpoint.py. Any torchvision model: its
    # IMAGENET1K_V1 file, which the table agrees with.
    assert resolve_url("torchvision://resnet18") == "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    for name, url in PRETRAINED_URLS.items():
        if name.startswith("torchvision://"):
            model = name[len("torchvision://") :]
            assert torchvision.models.get_model_weights(model)["IMAGENET1K_V1"].url == url
    for url in ("http://127.0.0.1:1/b.pth", "file:///tmp/c.pth"):
        assert resolve_url(url) == url


@pytest.mark.parametrize(
    "name",
    [
        "mask-rcnn_r50-gcb-r4-c3-c5_fpn_1x_coco",  # zoo names: the application layer's builder resolves them
        "torchvision://resnet7",
        "torchvision://vit_h_14",
        "open-mmlab://nothing",
        "s3://bucket/x.pth",
    ],
)
def test_unknown_names_are_one_line_errors(name):
    with pytest.raises(CheckpointError, match="unknown checkpoint name") as err:
        resolve_url(name)
    _one_line(err)


def test_load_checkpoint_takes_no_zoo_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    name = "mask-rcnn_r50-gcb-r4-c3-c5_fpn_1x_coco"
    with pytest.raises(CheckpointError, match=f"{name}: checkpoint file not found"):
        load_checkpoint(nn.Linear(1, 1), name)
