"""Weights downloads through a local HTTP server and file:// URLs: downloaded once into torch.hub's cache with its
hash checked, reused, refused offline, and every failure (refused connection, silent server, wrong hash, a body
cut short) a one-line MissingWeightsError that leaves nothing in the cache; offline, a framework's own download
makes no connection; this machine's errors (a full disk, a permission) are never called network errors."""

from __future__ import annotations

import errno
import hashlib
import http.server
import io
import os
import socket
import threading
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import distinit.extract.teachers.imagenet_torchvision as imagenet_torchvision
from distinit.extract.teachers import create_teacher
from distinit.pipeline.cli import main
from distinit.pipeline.errors import ConfigError, OutputError
from distinit.pipeline.hashing import sha256_file
from distinit.pipeline.weights.download import (
    fetch_torch_hub_file,
    fetch_weights_file,
    framework_download,
    offline,
    torch_hub_hash_prefix,
)
from distinit.pipeline.weights.files import MissingWeightsError, torch_hub_checkpoint_path

GUARD_SECONDS = 60  # a hung download fails the test instead of hanging the suite; not a speed assertion


def _state_dict_bytes(state_dict: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    return buffer.getvalue()


def _hub_name(stem: str, content: bytes) -> str:
    """torch.hub's published-file convention: `<stem>-<first 8 hex digits of the sha256>.pth`."""
    return f"{stem}-{hashlib.sha256(content).hexdigest()[:8]}.pth"


class WeightsServer:
    """Serves `files` (name -> bytes) on 127.0.0.1 and counts the requests it answers. A name in `announced`
    is sent with that Content-Length instead of its own, then the connection closes (a body cut short)."""

    def __init__(self, files: dict[str, bytes], announced: dict[str, int] | None = None):
        self.files, self.announced, self.requests = files, announced or {}, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                content = server.files.get(self.path.lstrip("/"))
                if content is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(server.announced.get(self.path.lstrip("/"), len(content))))
                self.end_headers()
                self.wfile.write(content)

            def log_message(self, *arguments):  # keep the test output quiet
                pass

        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.http.server_address[1]}/{name}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exception):
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def online(monkeypatch, tmp_path):
    """Downloads allowed (conftest clears the hub's offline variables), torch.hub's cache in a temporary TORCH_HOME."""
    monkeypatch.delenv("DISTINIT_OFFLINE")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path


@pytest.fixture
def tiny_file():
    content = _state_dict_bytes({"weight": torch.arange(6, dtype=torch.float32).reshape(2, 3)})
    return _hub_name("tiny", content), content


def _cache_folder_entries(url: str) -> list[str]:
    folder = torch_hub_checkpoint_path(url).parent
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


def _assert_one_line(error: BaseException) -> str:
    message = str(error)
    assert message and "\n" not in message and "Traceback" not in message
    return message


# ---------------------------------------------------------------- downloaded, checked, cached, reused


def test_download_lands_in_the_torch_hub_cache_and_is_reused(online, tiny_file):
    name, content = tiny_file
    with WeightsServer({name: content}) as server:
        url = server.url(name)
        assert torch_hub_hash_prefix(url) == hashlib.sha256(content).hexdigest()[:8]
        path = fetch_torch_hub_file(url, "tiny")
        assert path == torch_hub_checkpoint_path(url) and path.read_bytes() == content
        assert str(path).startswith(str(online / "torch" / "hub" / "checkpoints"))
        assert fetch_torch_hub_file(url, "tiny") == path
        assert server.requests == [f"/{name}"]  # the second call read the cache
    assert _cache_folder_entries(url) == [name]  # no partial file left beside it


def test_wrong_hash_is_one_line_and_leaves_nothing_in_the_cache(online, tiny_file):
    _, content = tiny_file
    with WeightsServer({"tiny-00000000.pth": content}) as server:
        url = server.url("tiny-00000000.pth")
        with pytest.raises(MissingWeightsError) as caught:
            fetch_torch_hub_file(url, "tiny")
    message = _assert_one_line(caught.value)
    assert url in message and str(torch_hub_checkpoint_path(url)) in message and "00000000" in message
    assert _cache_folder_entries(url) == []


def test_a_body_cut_short_is_one_line_and_leaves_nothing_in_the_cache(online):
    # No hash to check (the places365 files have none in their names): only the byte count catches it.
    cache_path = online / "cache" / "x.pth.tar"
    with WeightsServer({"x.pth.tar": b"x" * 1000}, announced={"x.pth.tar": 100_000}) as server:
        url = server.url("x.pth.tar")
        outcome = _run_guarded(lambda: fetch_weights_file(url, cache_path, "places365"))
    assert isinstance(outcome.get("error"), MissingWeightsError)
    message = _assert_one_line(outcome["error"])
    assert "stopped after 1000 of 100000 bytes" in message and url in message and str(cache_path) in message
    assert sorted(os.listdir(cache_path.parent)) == []  # neither the file nor its partial download


def test_missing_file_on_the_server_names_the_status(online):
    with WeightsServer({}) as server:
        url = server.url("gone-12345678.pth")
        with pytest.raises(MissingWeightsError, match="HTTP Error 404") as caught:
            fetch_torch_hub_file(url, "tiny")
    _assert_one_line(caught.value)
    assert _cache_folder_entries(url) == []


def test_file_url_is_copied_into_the_cache(online, tiny_file, tmp_path):
    name, content = tiny_file
    source = tmp_path / "mirror" / name
    source.parent.mkdir()
    source.write_bytes(content)
    url = source.as_uri()
    assert fetch_torch_hub_file(url, "tiny").read_bytes() == content
    assert torch_hub_checkpoint_path(url).is_file()


def test_a_cache_folder_that_cannot_be_written_is_not_called_a_network_error(online, tiny_file, tmp_path):
    name, content = tiny_file
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"a file where the cache folder should be")
    with WeightsServer({name: content}) as server:
        with pytest.raises(OutputError) as caught:
            fetch_weights_file(server.url(name), blocker / name, "tiny")
    message = _assert_one_line(caught.value)
    assert f"into {blocker} (" in message and "--offline" not in message and "cannot download" not in message


def test_an_explicit_file_wins_and_must_exist(online, tmp_path):
    given = tmp_path / "given.pth"
    given.write_bytes(b"x")
    url = "http://127.0.0.1:9/never-12345678.pth"  # never contacted: a file is given
    assert fetch_weights_file(url, tmp_path / "cache.pth", "tiny", weights=given) == given
    with pytest.raises(MissingWeightsError, match="does not exist"):
        fetch_weights_file(url, tmp_path / "cache.pth", "tiny", weights=tmp_path / "nothing.pth")


# ---------------------------------------------------------------- no network: fast one-line errors


def _closed_port() -> int:
    """A port nothing listens on: bound, then closed, so a connection to it is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _run_guarded(function):
    """Run `function` in a thread; fail (instead of hanging the suite) if it has not returned in GUARD_SECONDS."""
    outcome = {}

    def target():
        try:
            outcome["value"] = function()
        except BaseException as error:  # handed to the test thread
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(GUARD_SECONDS)
    assert not thread.is_alive(), "the download hung"
    return outcome


def test_refused_connection_is_one_line(online):
    url = f"http://127.0.0.1:{_closed_port()}/tiny-12345678.pth"
    outcome = _run_guarded(lambda: fetch_torch_hub_file(url, "tiny"))
    assert isinstance(outcome.get("error"), MissingWeightsError)
    message = _assert_one_line(outcome["error"])
    assert url in message and str(torch_hub_checkpoint_path(url)) in message and "--offline" in message
    assert _cache_folder_entries(url) == []


def test_a_server_that_never_answers_times_out(online, monkeypatch):
    monkeypatch.setenv("DISTINIT_DOWNLOAD_TIMEOUT", "1")
    with socket.socket() as silent:  # the kernel completes the handshake; nobody ever answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/tiny-12345678.pth"
        outcome = _run_guarded(lambda: fetch_torch_hub_file(url, "tiny"))
    assert isinstance(outcome.get("error"), MissingWeightsError)
    assert "DISTINIT_DOWNLOAD_TIMEOUT" in _assert_one_line(outcome["error"])
    assert _cache_folder_entries(url) == []
    assert socket.getdefaulttimeout() is None  # the timeout was only for the download


def test_a_bad_timeout_setting_is_a_config_error(online, monkeypatch):
    monkeypatch.setenv("DISTINIT_DOWNLOAD_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match="DISTINIT_DOWNLOAD_TIMEOUT='soon'"):
        fetch_torch_hub_file(f"http://127.0.0.1:{_closed_port()}/tiny-12345678.pth", "tiny")


# ---------------------------------------------------------------- offline: today's message, no request


@pytest.mark.parametrize("variable", ["DISTINIT_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_offline_names_the_file_and_makes_no_request(online, tiny_file, monkeypatch, variable):
    name, content = tiny_file
    monkeypatch.setenv(variable, "1")
    assert offline()
    with WeightsServer({name: content}) as server:
        url = server.url(name)
        with pytest.raises(MissingWeightsError) as caught:
            fetch_torch_hub_file(url, "tiny")
        assert server.requests == []
    message = _assert_one_line(caught.value)
    cache_path = torch_hub_checkpoint_path(url)
    assert f"no weights at {cache_path}; download {url} to that path (or pass weights=FILE)" in message
    assert f"offline ({variable}=1)" in message


def test_offline_still_reads_the_cache(online, tiny_file, monkeypatch):
    name, content = tiny_file
    url = f"http://127.0.0.1:{_closed_port()}/{name}"
    cached = torch_hub_checkpoint_path(url)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(content)
    monkeypatch.setenv("DISTINIT_OFFLINE", "true")
    assert fetch_torch_hub_file(url, "tiny") == cached


# ---------------------------------------------------------------- a framework's own download


def test_framework_download_turns_network_errors_into_one_line(online):
    cache_path = online / "framework" / "model.pkl"
    with pytest.raises(MissingWeightsError) as caught:
        with framework_download("coco-objects", "https://example.invalid/model.pkl", cache_path):
            raise urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))
    message = _assert_one_line(caught.value)
    assert "Connection refused" in message and str(cache_path) in message and "https://example.invalid" in message

    class ConnectError(Exception):  # an HTTP client's own error type, not an OSError (httpx2's, for one)
        __module__ = "httpx2._exceptions"

    with pytest.raises(MissingWeightsError, match=r"cannot download hf-hub:some/model \(no route\)"):
        with framework_download("clip", "hf-hub:some/model", None):
            raise ConnectError("no route")
    with pytest.raises(ZeroDivisionError):  # not a network error: left alone
        with framework_download("coco-objects", "https://example.invalid/model.pkl", cache_path):
            raise ZeroDivisionError


def test_framework_download_offline(online, monkeypatch):
    monkeypatch.setenv("DISTINIT_OFFLINE", "1")
    missing = online / "framework" / "model.pkl"
    ran = []
    with pytest.raises(MissingWeightsError, match=f"no weights at {missing}; download https://x.invalid/m.pkl"):
        with framework_download("coco-objects", "https://x.invalid/m.pkl", missing):
            ran.append(True)
    assert ran == []  # refused before the framework tried anything
    with framework_download("clip", "hf-hub:some/model", None):  # only the hub knows its cache: it runs offline
        assert os.environ["HF_HUB_OFFLINE"] == "1"
    monkeypatch.delenv("DISTINIT_OFFLINE")
    assert "HF_HUB_OFFLINE" not in os.environ  # restored after the block


def test_framework_download_offline_refuses_every_connection(online, tiny_file, tmp_path, monkeypatch):
    """Offline with nothing known to look for (cache_path None), a framework that downloads anyway, here through
    torch.hub's own downloader, gets the offline one line and the server sees no request."""
    monkeypatch.setenv("DISTINIT_OFFLINE", "1")
    name, content = tiny_file
    with WeightsServer({name: content}) as server:
        url = server.url(name)
        with pytest.raises(MissingWeightsError) as caught:
            with framework_download("clip", "hf-hub:some/model", None):
                torch.hub.download_url_to_file(url, str(tmp_path / name), progress=False)
        assert server.requests == []
        message = _assert_one_line(caught.value)
        assert "hf-hub:some/model is not in the framework's cache" in message
        assert "offline (DISTINIT_OFFLINE=1), so nothing is downloaded" in message
        monkeypatch.delenv("DISTINIT_OFFLINE")  # after the block every connection works again
        assert "connect" not in vars(socket.socket) and fetch_torch_hub_file(url, "tiny").read_bytes() == content
        assert server.requests == [f"/{name}"]


@pytest.mark.parametrize("error", [
    PermissionError(errno.EACCES, "Permission denied", "/cache/model.pkl"),
    OSError(errno.ENOSPC, "No space left on device"),
], ids=["permission", "full-disk"])
def test_framework_download_passes_this_machines_errors_through_unchanged(online, error):
    """Not network errors, so never "cannot download ... run with --offline": the error itself, which names the
    file (framework_download cannot know which folder a framework was writing)."""
    with pytest.raises(type(error)) as caught:
        with framework_download("coco-objects", "https://example.invalid/model.pkl", online / "model.pkl"):
            raise error
    assert caught.value is error


def test_framework_download_counts_an_unreachable_network_as_a_network_error(online):
    with pytest.raises(MissingWeightsError, match=r"cannot download .*\(Network is unreachable\)"):
        with framework_download("coco-objects", "https://example.invalid/model.pkl", online / "model.pkl"):
            raise OSError(errno.ENETUNREACH, "Network is unreachable")


# ---------------------------------------------------------------- a teacher downloaded end to end


@pytest.fixture
def served_squeezenet(online, monkeypatch):
    """imagenet-torchvision's squeezenet1_1 (the smallest torchvision classifier, 5 MB) served locally: random
    weights under the file name torch.hub's convention gives them, the teacher's URL pointed at the server."""
    import torchvision

    torch.manual_seed(0)
    content = _state_dict_bytes(torchvision.models.squeezenet1_1().state_dict())
    name = _hub_name("squeezenet1_1", content)
    original = imagenet_torchvision.torchvision_classifier_weights

    class ServedWeights:  # torchvision's weights entry with only its URL changed
        def __init__(self, weights, url):
            self._weights, self.url = weights, url

        def __getattr__(self, attribute):
            return getattr(self._weights, attribute)

    with WeightsServer({name: content}) as server:
        monkeypatch.setattr(imagenet_torchvision, "torchvision_classifier_weights",
                            lambda model, tag: ServedWeights(original(model, tag), server.url(name)))
        yield server, name


def test_torchvision_teacher_downloads_its_weights_on_first_use(served_squeezenet):
    server, name = served_squeezenet
    teacher = create_teacher("imagenet-torchvision", model="squeezenet1_1")
    cached = torch_hub_checkpoint_path(server.url(name))
    assert cached.is_file() and teacher.describe()["weights_sha256"] == sha256_file(cached)
    logits = teacher(np.zeros((1, 64, 64, 3), np.uint8))["logits"]
    assert logits.shape == (1, 1000) and np.isfinite(logits).all()
    again = create_teacher("imagenet-torchvision", model="squeezenet1_1")
    assert again.weights_sha256 == teacher.weights_sha256 and server.requests == [f"/{name}"]


def test_cli_extract_offline_without_cached_weights_is_one_error_line(online, tmp_path, monkeypatch):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "a.mp4").write_bytes(b"never decoded: the teacher is built first")
    result = CliRunner().invoke(main, [
        "extract", "--offline", "--data", "folder", "--root", str(videos), "--out", str(tmp_path / "targets"),
        "--teachers", "imagenet-torchvision", "--teacher-option", "imagenet-torchvision.model=resnet18",
        "--workers", "0", "--no-progress",
    ])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "offline (DISTINIT_OFFLINE=1)" in lines[0]
    assert str(Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in lines[0]
    assert os.environ["DISTINIT_OFFLINE"] == "1"  # set for the process and the workers it starts


def test_the_hubs_offline_variables_are_cleared_for_every_test():
    """The CLI test above set HF_HUB_OFFLINE=1 in os.environ (--offline does); conftest undoes it, so a later test
    (downloading from its own local server) is not offline by accident."""
    assert "HF_HUB_OFFLINE" not in os.environ and "TRANSFORMERS_OFFLINE" not in os.environ


@pytest.mark.parametrize("command", ["extract", "eval", "compare", "teachers"])
def test_commands_that_may_download_take_offline(command):
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0 and "--offline" in result.output


def test_offline_refusal_leaves_local_unix_sockets_alone(tmp_path, monkeypatch):
    import socket

    from distinit.pipeline.weights.network import no_connections

    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(tmp_path / "local.sock"))
    server.listen(1)
    with no_connections():
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(str(tmp_path / "local.sock"))  # multiprocessing's fd passing works like this
        client.close()
        internet = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with pytest.raises(ConnectionRefusedError):
            internet.connect(("127.0.0.1", 9))
        internet.close()
    server.close()


def test_a_malformed_hub_repository_id_is_not_called_a_network_error():
    from huggingface_hub.errors import HFValidationError

    from distinit.pipeline.weights.network import is_network_error

    assert not is_network_error(HFValidationError("Repo id must be in the form 'repo_name'"))
