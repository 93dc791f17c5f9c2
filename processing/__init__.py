"""Data for BLSP-Emo: manifests, audio, target generation, cleaning, augmentation, collators."""
