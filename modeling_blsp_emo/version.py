"""Version of the blsp-emo package; recorded in every config it writes."""

__version__ = "0.1.0"
