"""The pytest plugin of relay.testing, from this checkout, for tests/ and examples/.

An installed package registers the same plugin through its ``pytest11`` entry point;
pyproject.toml turns that one off here so the checkout's code is what runs.
"""

pytest_plugins = ["relay.testing.plugin"]
