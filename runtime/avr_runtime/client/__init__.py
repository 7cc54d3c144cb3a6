"""Clients that place calls into a worker: the demo's sample call, the tests and the load generator use them."""
