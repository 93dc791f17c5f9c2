"""Where a checkpoint's base models came from (Hub id, display name, licence), for its config and card."""

import logging
import re
from pathlib import Path

from huggingface_hub import HfApi, ModelCard

from trainers.checkpoints.bundled.registry import BUNDLED_MODELS

logger = logging.getLogger(__name__)


def describe_base_model(source: str) -> dict[str, str | None]:
    """Where a base model came from: `{"id": Hub repo id or None, "name": display name, "license": id or None}`.

    Hub ids are kept as they are and their licence is read from their model card (best effort). A local
    folder records only its name, never its path; it maps back to a Hub id when it is a bundled model
    (`trainers.checkpoints.bundled`) or a Hub cache snapshot, and its licence comes from its own
    README.md if any.
    """
    path = Path(source)
    if not path.is_dir():
        return {"id": source, "name": source, "license": _hub_model_license(source)}
    resolved = path.resolve()
    if resolved.parent.name == "bundled" and resolved.name in BUNDLED_MODELS:
        bundled = BUNDLED_MODELS[resolved.name]
        return {"id": bundled.hub_id, "name": bundled.hub_id, "license": bundled.license}
    snapshot = re.search(r"models--([^/]+)--([^/]+)/snapshots/[^/]+$", resolved.as_posix())
    repo_id = f"{snapshot.group(1)}/{snapshot.group(2)}" if snapshot else None
    readme = resolved / "README.md"
    return {"id": repo_id, "name": repo_id or resolved.name, "license": _card_license(readme) if readme.is_file() else None}


def _card_license(readme: Path) -> str | None:
    data = ModelCard.load(readme, ignore_metadata_errors=True).data
    return data.get("license_name") if data.get("license") == "other" else data.get("license")


def _hub_model_license(repo_id: str) -> str | None:
    try:
        return _card_license(Path(HfApi().hf_hub_download(repo_id, "README.md")))
    except Exception as error:  # the licence is a nicety: offline, gated or card-less models stay unknown
        logger.info("licence of %s unknown (%s)", repo_id, type(error).__name__)
        return None
