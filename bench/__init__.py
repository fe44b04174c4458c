"""Benchmarks: dispatch_client against the official frequenz-client-dispatch.

Run with `make bench` (or `python -m bench` inside `bench/.venv`); see bench/README.md.
"""
