"""Training, evaluation, publishing and the `blsp-emo` command line."""
