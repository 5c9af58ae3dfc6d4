"""The demo clients of tweet-relay: a terminal client (relay-demo) and a browser page."""
