"""The card's text, and the upload of a dataset folder to the Hugging Face Hub in one commit.

A card on the Hub may have been edited there: its metadata is merged, not replaced, following
`huggingface_hub.metadata_update` without `overwrite` (a value already on the Hub stays), except
for what describes the files being pushed (`configs`, `dataset_info`, `size_categories`), which
must match them. Tags are the union of both. The card's body is this export's.

The token comes from huggingface_hub's usual places (`HF_TOKEN`, or `hf auth login`); the
endpoint from `HF_ENDPOINT`. Neither is ever printed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from selfinstruct.errors import ConfigError, HubError, MissingExtraError

# Metadata that describes the files of this push: always this export's.
DATA_KEYS = ("configs", "dataset_info", "size_categories")
UNION_KEYS = ("tags",)
CARD_FILE = "README.md"


def _hub() -> Any:
    try:
        import huggingface_hub
    except ImportError:
        raise MissingExtraError(
            "export needs huggingface_hub and pyarrow: pip install 'selfinstruct[hub]'"
        ) from None
    return huggingface_hub


def render_card(meta: dict[str, Any], text: str) -> str:
    """The card as the Hub reads it: YAML metadata between --- lines, then the body. Parsing
    it back through `DatasetCard` checks that the header is valid YAML the Hub can read."""
    hf = _hub()
    data = hf.DatasetCardData(**meta)
    card = hf.DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{text}")
    return str(card)


def merge_cards(ours: str, theirs: str | None) -> tuple[str, list[str]]:
    """Our card with the metadata already on the Hub kept; and a note per value kept."""
    if theirs is None:
        return ours, []
    hf = _hub()
    mine = hf.DatasetCard(ours)
    hub = hf.DatasetCard(theirs).data.to_dict()
    merged = mine.data.to_dict()
    notes = []
    for key, value in hub.items():
        if value is None or key in DATA_KEYS:
            continue
        if key in UNION_KEYS and isinstance(value, list):
            merged[key] = list(dict.fromkeys([*value, *(merged.get(key) or [])]))
        elif key in merged and merged[key] != value:
            notes.append(
                f"kept {key}: {value!r} from the card on the Hub (this export: {merged[key]!r})"
            )
            merged[key] = value
        else:
            merged[key] = value
    return render_card(merged, mine.text.lstrip("\n")), notes


def push_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> str:
    """Upload an exported folder to the dataset repository `repo_id` (created if needed, private
    when asked) in one commit; returns the dataset's URL. The folder's README.md is replaced by
    the card as pushed (merged with the Hub's metadata)."""
    hf = _hub()
    say = progress or (lambda _m: None)
    folder = Path(folder)
    if not (folder / CARD_FILE).is_file():
        raise ConfigError(f"{folder}: no {CARD_FILE}; export the run there first")
    if "/" not in repo_id:
        raise ConfigError(f"repo: expected NAMESPACE/NAME (e.g. me/my-data), got {repo_id!r}")
    token = token or hf.get_token()
    if not token:
        raise ConfigError(
            "no Hugging Face token: set HF_TOKEN or run 'hf auth login' (a write token)"
        )
    api = hf.HfApi(token=token)
    try:
        # Not private: the Hub's default for the namespace (an organisation may default to private)
        visibility = True if private else None
        url = api.create_repo(repo_id, repo_type="dataset", private=visibility, exist_ok=True)
        card, notes = merge_cards(
            (folder / CARD_FILE).read_text("utf-8"), _card_on_hub(api, hf, repo_id)
        )
        for note in notes:
            say(note)
        (folder / CARD_FILE).write_text(card, encoding="utf-8")
        api.upload_folder(
            folder_path=folder,
            repo_id=repo_id,
            repo_type="dataset",
            commit_message="Upload a Self-Instruct dataset with selfinstruct export",
            delete_patterns=["data/**", "figures/**"],
        )
    except hf.errors.HfHubHTTPError as e:
        raise HubError(f"hub: {repo_id}: {_why(e)}") from None
    except ValueError as e:  # the Hub's check of the card's metadata
        raise HubError(f"hub: {repo_id}: {' '.join(str(e).split())}") from None
    except Exception as e:
        if not _unreachable(e):
            raise
        where = hf.constants.ENDPOINT
        raise HubError(f"hub: {repo_id}: cannot reach {where} ({type(e).__name__}: {e})") from None
    return str(url)


def _card_on_hub(api: Any, hf: Any, repo_id: str) -> str | None:
    """The repository's README.md, or None when it has none."""
    try:
        path = api.hf_hub_download(repo_id, CARD_FILE, repo_type="dataset")
    except (hf.errors.EntryNotFoundError, hf.errors.RepositoryNotFoundError):
        return None
    return Path(path).read_text("utf-8")


def _unreachable(error: Exception) -> bool:
    """A connection that failed below HTTP: an OSError, or the HTTP client's own error class
    (huggingface_hub's client library has changed over versions, so it is told by module)."""
    module = type(error).__module__.split(".")[0]
    return isinstance(error, OSError) or module.startswith(("httpx", "httpcore", "requests"))


def _why(error: Any) -> str:
    status = getattr(getattr(error, "response", None), "status_code", None)
    if status == 401:
        return "the Hub refused the token (HTTP 401): check HF_TOKEN or 'hf auth login'"
    if status == 403:
        return "the token may not write to this repository (HTTP 403): use a write token"
    return (str(error).strip().splitlines() or ["unknown error"])[0]
