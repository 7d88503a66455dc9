"""``dicom-inlet serve --config FILE``: every key type-checked against its command line
option, unknown keys and bad values named with the file, paths relative to the file."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_cli import LISTENING, ServeProcess
from test_cli_send import assert_one_line_error, run

from dicom_inlet import cli


def config_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "inlet.toml"
    path.write_text(text + "\n")
    return path


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ('durable = "false"', ["option 'durable'", "true or false", "'false'"]),
        ('quiet = "no"', ["option 'quiet'", "true or false"]),
        ("require-called-aet = 1", ["option 'require-called-aet'", "true or false"]),
        ("prot = 104", ["unknown option 'prot' in"]),
        ('aet = "A_FAR_TOO_LONG_AE_TITLE"', ["option 'aet'", "1 to 16"]),
        ('port = "104"', ["option 'port'", "must be a number", "'104'"]),
        ("host = 5", ["option 'host'", "must be a string"]),
        ("port = true", ["option 'port'", "not true"]),
        ('sort_by = "bogus"', ["option 'sort_by'", "one of patient, study, series, image"]),
        ("calling_aet = [1, 2]", ["option 'calling_aet'", "must be a string"]),
        ("max_pdu = [1]", ["option 'max_pdu'", "single value"]),
        ('data_dir = ["a"]', ["option 'data_dir'", "single value"]),
    ],
)
def test_bad_config_names_the_file_and_the_key(tmp_path: Path, line: str, words: list[str]):
    path = config_file(tmp_path, line)
    assert_one_line_error(run("serve", "--config", str(path)), str(path), *words)


def test_every_serve_option_is_type_checked_from_its_definition(tmp_path: Path):
    """Options added later are covered too: the checks come from the argparse actions."""
    _, serve = cli._parser()
    keys = cli._config_keys(serve)
    assert {"port", "aet", "durable", "calling_aet", "data_dir"} <= set(keys)
    assert "config" not in keys and "help" not in keys
    for key, action in keys.items():
        flag = action.nargs == 0
        wrong = '"yes"' if flag else "true"
        with pytest.raises(ValueError, match=rf"option '{key}' in .*inlet\.toml"):
            cli._config_defaults(serve, config_file(tmp_path, f"{key} = {wrong}"))
        if flag:
            defaults = cli._config_defaults(serve, config_file(tmp_path, f"{key} = true"))
            assert defaults == {action.dest: action.const}


def test_relative_data_dir_is_relative_to_the_file(tmp_path: Path):
    (tmp_path / "conf").mkdir()
    (tmp_path / "elsewhere").mkdir()
    path = config_file(tmp_path / "conf", 'data_dir = "store"\nhost = "127.0.0.1"\nport = 0')
    server = ServeProcess(["--config", str(path)], cwd=tmp_path / "elsewhere")
    try:
        line = server.wait_for(LISTENING).string
        assert f"storing in {tmp_path / 'conf' / 'store'} " in line
        assert server.interrupt() == 0, server.text()
    finally:
        server.kill()
    assert (tmp_path / "conf" / "store").is_dir()
    assert not (tmp_path / "elsewhere" / "store").exists()


def test_absolute_data_dir_is_kept(tmp_path: Path):
    _, serve = cli._parser()
    target = tmp_path / "absolute"
    defaults = cli._config_defaults(serve, config_file(tmp_path, f'data_dir = "{target}"'))
    assert defaults == {"data_dir": str(target)}
