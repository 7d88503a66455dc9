"""Starting a server: the port is bound before data_dir is created, a data_dir that is a file
is named as such."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from conftest import HOST
from test_cli_send import assert_one_line_error, run

from dicom_inlet import StoreSCPServer


def test_failed_bind_leaves_no_data_dir(tmp_path: Path):
    data_dir = tmp_path / "never"
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = StoreSCPServer({"aetitle": "INLET", "port": port, "ip": HOST}, data_dir=data_dir)
        with pytest.raises(OSError, match=f"cannot listen on {HOST}:{port}"):
            server.run()
    assert not data_dir.exists()
    server.shutdown()  # returns: nothing was started


def test_data_dir_that_is_a_file_is_not_a_directory(tmp_path: Path):
    file = tmp_path / "plain"
    file.write_text("not a directory")
    server = StoreSCPServer({"aetitle": "INLET", "port": 0, "ip": HOST}, data_dir=file)
    with pytest.raises(OSError, match=f"cannot use data_dir {file}: is not a directory"):
        server.run()
    assert file.read_text() == "not a directory"
    assert_one_line_error(
        run("serve", str(file), "--port", "0", "--host", HOST), str(file), "is not a directory"
    )
