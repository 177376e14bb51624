"""Runs one sweep task in a subprocess (for the kill and concurrency tests): CONFIG STORE TASK."""

import sys

from ntkspec.sweep import load_config, run_sweep

config = load_config(sys.argv[1], store=sys.argv[2])
print("start", flush=True)
run_sweep(config, task=sys.argv[3], progress=False)
print("done", flush=True)
