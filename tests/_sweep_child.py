"""Runs one sweep task in a subprocess (for the kill and concurrency tests): CONFIG STORE TASK."""

import sys

from ntkspec.experiments.config import load_config
from ntkspec.experiments.sweep import run_sweep

config = load_config(sys.argv[1], store=sys.argv[2])
print("start", flush=True)
run_sweep(config, task=sys.argv[3])
print("done", flush=True)
