"""One module a group of ``relay`` commands; ``relay.app.cli`` builds the parser over them."""
