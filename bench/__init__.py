"""Benchmarks of tweet-relay: `make bench` runs them."""
