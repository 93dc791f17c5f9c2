"""Publishing checkpoints on the Hugging Face Hub: files, model card, licences, push and verification."""

from trainers.hub.card import load_ser_metrics, render_model_card
from trainers.hub.errors import HubPublishError
from trainers.hub.files import checkpoint_files
from trainers.hub.push import PushResult, push_model_to_hub, push_to_hub
from trainers.hub.verify import verify_repo

__all__ = [
    "HubPublishError", "PushResult", "checkpoint_files", "load_ser_metrics", "push_model_to_hub", "push_to_hub",
    "render_model_card", "verify_repo",
]
