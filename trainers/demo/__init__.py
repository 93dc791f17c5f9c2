"""The end-to-end demo on the embedded default: corpus, both stages, evaluation and report."""

from trainers.demo.run import Demo, DemoSettings

__all__ = ["Demo", "DemoSettings"]
