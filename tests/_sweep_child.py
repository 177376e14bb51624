"""Runs one sweep task in a subprocess (for the kill and concurrency tests): CONFIG STORE TASK.

Prints "start", then its summary as JSON (what it trained, skipped, left to another process, and
resumed from a checkpoint).
"""

import json
import sys

from ntkspec.experiments.config import load_config
from ntkspec.experiments.sweep import run_sweep

config = load_config(sys.argv[1], store=sys.argv[2])
print("start", flush=True)
summary = run_sweep(config, task=sys.argv[3])
fields = ("done", "skipped", "busy", "resumed")
print(json.dumps({field: getattr(summary, field) for field in fields}), flush=True)
