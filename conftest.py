"""The pytest plugin of relay.testing, from this checkout, for tests/ and examples/.

An installed package registers the same plugin through its ``pytest11`` entry point;
pyproject.toml turns that one off here so the checkout's code is what runs.
"""

from __future__ import annotations

import pytest

pytest_plugins = ["relay.testing.plugin"]


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    # pyproject.toml sets `timeout`, pytest-timeout's setting (a dev dependency). With only
    # the [testing] extra installed, pytest would call it an unknown option, and
    # filterwarnings = error makes that a failure before any test runs: declared here, it
    # is simply unused. With the plugin, the plugin's own declaration stands.
    if not pluginmanager.hasplugin("timeout"):
        parser.addini("timeout", "a test's time limit in seconds (used by pytest-timeout)")
