"""The local `evaluate` metric module for speech emotion recognition (load it by path)."""

from pathlib import Path

SER_METRICS_PATH = str(Path(__file__).with_name("ser_metrics.py"))
