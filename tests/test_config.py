"""Settings: file < environment < flags, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.config import Settings
from relay.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_precedence_is_file_then_environment_then_flags(tmp_path: Path) -> None:
    file = tmp_path / "relay.toml"
    file.write_text('[server]\nport = 9000\nhost = "0.0.0.0"\n[store]\ndb = "file.db"\n')
    settings = Settings.load(
        file=file, environ={"PORT": "9100", "RELAY_DB": "env.db"}, flags={"db": "flag.db"}
    )
    assert (settings.host, settings.port, settings.db) == ("0.0.0.0", 9100, "flag.db")


def test_relay_port_wins_over_the_paas_port() -> None:
    assert Settings.load(environ={"PORT": "1", "RELAY_PORT": "2"}).port == 2


def test_the_documented_defaults_file_matches_the_code() -> None:
    assert Settings.load(file=ROOT / "config" / "relay.toml") == Settings()


def test_every_setting_and_its_environment_names_are_documented() -> None:
    from dataclasses import fields

    from relay.config import ENVIRONMENT

    documented = (ROOT / "config" / "relay.toml").read_text()
    readme = (ROOT / "docs" / "configuration.md").read_text()
    for setting in fields(Settings):
        assert setting.name in documented, f"{setting.name} is not in config/relay.toml"
        assert f"`{setting.name}`" in readme, f"{setting.name} is not in docs/configuration.md"
        for name in ENVIRONMENT[setting.name]:
            assert name in documented and name in readme, f"{name} is not documented"


def test_speed_max_and_loop_defaults() -> None:
    assert Settings.load(flags={"speed": "max"}).speed == 0
    assert Settings().replay_loops  # the bundled sample loops
    assert not Settings(replay="x.jsonl").replay_loops
    assert Settings(replay="x.jsonl", loop=True).replay_loops


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"port": "eighty"}, "port"),
        ({"port": 70000}, "port"),
        ({"speed": "-2"}, "speed"),
        ({"loop": "perhaps"}, "loop"),
        ({"source": "carrier-pigeon"}, "source"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_bad_settings_raise_config_error_naming_the_key(
    values: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_mapping(values)


def test_a_missing_or_broken_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        Settings.load(file=tmp_path / "none.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("port = = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Settings.load(file=broken)
