"""Publish a BLSP-Emo checkpoint on the Hugging Face Hub: weights, config, remote code, processor and a
model card, in one commit; optionally load it back in a fresh process to prove that it works.

The token comes from huggingface_hub's usual sources (`token=`, `HF_TOKEN`, `hf auth login`) and the
endpoint from `HF_ENDPOINT`. The token is never logged, printed or written to the card.
"""

import fnmatch
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError

from trainers.checkpoints.builder import save_checkpoint
from trainers.hub.card import render_model_card
from trainers.hub.errors import HubPublishError
from trainers.hub.files import checkpoint_files
from trainers.hub.verify import verify_repo
from trainers.training.emotion_alignment import finalize

logger = logging.getLogger(__name__)

# Files left in the repo by an earlier push that would mix with the new model (old shards, modules);
# other files (e.g. images a card links to) stay.
STALE_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "*.bin", "*.py")


@dataclass
class PushResult:
    """What `push_to_hub` published: the repo, the branch, the commit and its files, and the
    verification (generated text, emotion, pipeline class) when one was run."""

    repo_id: str
    revision: str
    commit_oid: str
    commit_url: str
    files: list[str]
    verification: dict | None = None


def _hub_error(error: HfHubHTTPError, action: str, repo_id: str, token: str) -> HubPublishError:
    status = error.response.status_code if error.response is not None else None
    detail = (error.server_message or str(error).splitlines()[0]).strip()
    if status == 401:
        message = (f"the Hub rejected the token while trying to {action} (401: {detail}); log in again with "
                   "`hf auth login` or set HF_TOKEN to a valid token with write access")
    elif status == 403:
        message = (f"the Hub refused to {action} {repo_id} (403: {detail}); check that the repo id is right and "
                   f"that the token may write to the '{repo_id.split('/')[0]}' namespace")
    else:
        message = f"could not {action} {repo_id} ({status}: {detail})"
    return HubPublishError(message.replace(token, "***"))


def push_to_hub(
    model_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    metrics: str | Path | None = None,
    datasets: Sequence[str] = (),
    language: Sequence[str] = ("en",),
    license: str | None = None,
    training_dirs: Sequence[str | Path] = (),
    commit_message: str | None = None,
    verify: bool = False,
    verify_timeout: float = 3600,
) -> PushResult:
    """Upload a saved checkpoint and its model card to `repo_id` in one commit.

    The repo is created if needed (`private` applies then); `revision` names a branch, created from
    `main` if it does not exist. Weights and Python files of an earlier upload that the checkpoint
    no longer has are deleted in the same commit. `verify=True` then loads the pushed commit in a fresh Python process
    with an empty cache through `pipeline("audio-to-text", trust_remote_code=True)` and runs one clip.
    Raises `HubPublishError` with a clear message (missing token, refused repo, incomplete checkpoint).
    """
    model_dir = Path(model_dir)
    token = _require_token(token)
    files = checkpoint_files(model_dir)
    api = HfApi(token=token)
    repo_id = _full_repo_id(api, repo_id, token)
    branch = revision or "main"
    card = render_model_card(
        model_dir, repo_id, revision=branch, metrics=metrics, datasets=datasets, language=language, license=license,
        training_dirs=training_dirs,
    )
    try:
        card.validate()
    except ValueError as error:
        raise HubPublishError(f"the Hub rejected the model card's metadata: {error}") from error
    additions = [CommitOperationAdd(path.relative_to(model_dir).as_posix(), str(path)) for path in files]
    additions.append(CommitOperationAdd("README.md", str(card).encode()))
    commit = _commit(api, repo_id, branch, additions, private, commit_message, token)
    result = PushResult(repo_id, branch, commit.oid, commit.commit_url, [op.path_in_repo for op in additions])
    if verify:
        result.verification = verify_repo(repo_id, commit.oid, token=token, timeout=verify_timeout)
    return result


def _require_token(token: str | None) -> str:
    token = token or get_token()
    if not token:
        raise HubPublishError(
            "no Hugging Face token found: log in with `hf auth login`, set the HF_TOKEN environment variable, "
            "or pass token= in Python (the token needs write access)"
        )
    return token


def _full_repo_id(api: HfApi, repo_id: str, token: str) -> str:
    """`NAME` → `USER/NAME` (the token's user); `NAMESPACE/NAME` unchanged."""
    if "/" in repo_id:
        return repo_id
    try:
        return f"{api.whoami()['name']}/{repo_id}"
    except HfHubHTTPError as error:
        raise _hub_error(error, "look up the token's user name for", repo_id, token) from error


def _commit(
    api: HfApi, repo_id: str, branch: str, additions: list[CommitOperationAdd], private: bool,
    commit_message: str | None, token: str,
):
    """Create the repo and branch if needed, then one commit of `additions` that also deletes files of
    an earlier upload matching `STALE_PATTERNS`."""
    action = "create the repo"
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if branch != "main":
            action = f"create branch '{branch}' in"
            api.create_branch(repo_id, branch=branch, exist_ok=True)
        action = "upload to"
        uploaded = {addition.path_in_repo for addition in additions}
        stale = [
            CommitOperationDelete(path) for path in api.list_repo_files(repo_id, revision=branch)
            if path not in uploaded and any(fnmatch.fnmatch(path, pattern) for pattern in STALE_PATTERNS)
        ]
        commit = api.create_commit(
            repo_id, [*additions, *stale], revision=branch,
            commit_message=commit_message or f"Upload BLSP-Emo model ({len(additions)} files)",
        )
    except HfHubHTTPError as error:
        raise _hub_error(error, action, repo_id, token) from error
    if stale:
        logger.info("removed files of an earlier upload: %s", ", ".join(op.path_in_repo for op in stale))
    logger.info("pushed %d files to %s (branch %s, commit %s)", len(additions), repo_id, branch, commit.oid)
    return commit


def push_model_to_hub(model, processor, repo_id: str, **kwargs) -> PushResult:
    """Save an in-memory model (global peft LoRA merged first) with `save_checkpoint`, then `push_to_hub`."""
    with tempfile.TemporaryDirectory(prefix="blsp_emo_push_") as directory:
        save_checkpoint(finalize(model), processor, directory)
        return push_to_hub(directory, repo_id, **kwargs)
