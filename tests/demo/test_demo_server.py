"""The demo's server without a browser: localhost binding, the upload limit, uploads that
stay in the app's folder, unreadable images, no weights, and the command line."""

from __future__ import annotations

import os
import socket

import httpx
import pytest
from gradio_client import Client, handle_file

from moee.demo import cli
from moee.demo.app import serve
from moee.demo.engine import DemoModel
from tests.demo.conftest import free_port


def files_under(root):
    return {p for p in root.rglob("*") if p.is_file()}


def test_binds_to_localhost(server):
    assert server.url.startswith("http://127.0.0.1:")
    assert server.app.server_name == "127.0.0.1"


def test_an_upload_over_the_limit_is_refused_and_not_kept(server):
    before = files_under(server.root)
    reply = httpx.post(f"{server.url}gradio_api/upload", timeout=30,
                          files={"files": ("big.png", b"\0" * 1_200_000)})  # limit: 1mb
    assert reply.status_code == 413 and "maximum allowed size" in reply.text
    assert files_under(server.root) == before


def test_an_upload_never_writes_outside_the_app_folder(server, tmp_path):
    name = "../../../escape.png"
    reply = httpx.post(f"{server.url}gradio_api/upload", timeout=30,
                          files={"files": (name, b"\x89PNG")})
    reply.raise_for_status()
    [path] = reply.json()
    assert server.root in (server.root / path).resolve().parents
    assert not [folder for folder in server.root.parents if (folder / "escape.png").exists()]


def test_an_image_file_that_is_not_an_image_is_one_message(server, demo_files):
    client = Client(server.url, verbose=False)
    with pytest.raises(Exception, match="cannot read the portrait: not an image file"):
        client.predict(handle_file(str(demo_files / "not_an_image.png")),
                       handle_file(str(demo_files / "speech.wav")), "happy", "dpmpp", 1, 1, 1,
                       1, 0, 4, 1, False, False, api_name="/generate")


def test_without_weights_the_page_opens_and_names_the_command(tmp_path):
    model = DemoModel([str(tmp_path / "weights")])
    temp_dir = os.environ.get("GRADIO_TEMP_DIR")
    running = serve(model, port=free_port(), examples=False, block=False, quiet=True)
    try:
        config = httpx.get(f"{running.url}config", timeout=30).text
        assert "make them with `python -m moee quickstart`" in config
    finally:
        running.close()
    assert os.environ.get("GRADIO_TEMP_DIR") == temp_dir and not running.root.exists()


def test_command_line_errors_are_one_line(tmp_path, monkeypatch, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit, match=rf"^error: cannot serve on 127.0.0.1:{port}: "
                           "Address already in use; pass another --port"):
            cli.main(["--weights", str(tmp_path), "--port", str(port), "--examples", "false"])
    monkeypatch.setattr(cli.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SystemExit, match=r"^error: the demo needs gradio: pip install -e"):
        cli.main(["--port", "1"])
