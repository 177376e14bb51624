"""Runs one sweep task in a subprocess (for the kill and concurrency tests): CONFIG STORE TASK.

Prints "start", then its summary as JSON (what it trained, skipped and left to another process).
"""

import json
import sys

from ntkspec.experiments.config import load_config
from ntkspec.experiments.sweep import run_sweep

config = load_config(sys.argv[1], store=sys.argv[2])
print("start", flush=True)
summary = run_sweep(config, task=sys.argv[3])
print(json.dumps({"done": summary.done, "skipped": summary.skipped, "busy": summary.busy}), flush=True)
