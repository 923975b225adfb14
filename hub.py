"""hub.py — a model given as a Hugging Face hub id (`org/name` or `org/name@revision`) -> a local folder.

    resolve_model("Qwen/Qwen2.5-0.5B-Instruct")          # -> .../snapshots/<commit>/ in the HF cache
    resolve_model("runs/x/ckpt")                          # a local folder is returned as it is

A local folder always wins over a hub id of the same spelling. Only what Qwen.from_pretrained and
the tokenizer read is fetched (config, tokenizer files, safetensors weights and their index,
generation_config.json, nano_rlsr.json): never .bin/.pt pickles. The usual huggingface_hub
settings apply: HF_HOME / HF_HUB_CACHE choose the cache, HF_HUB_OFFLINE=1 reads only from it, HF_TOKEN
for gated repos. huggingface_hub is an optional extra (`pip install -e ".[hub]"`).
"""

import os
import re

from model import CheckpointError

HUB_FILES = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
             "special_tokens_map.json", "*.safetensors", "*.safetensors.index.json", "nano_rlsr.json"]
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")  # org/name[@revision]


def is_hub_id(name: str) -> bool:
    """org/name[@revision] that is not a local path (a relative path with one slash also matches the
    pattern, so an existing file or folder of that name is never taken for a hub id)."""
    return bool(HUB_ID.match(name)) and not os.path.exists(name) and not name.startswith((".", "/", "~"))


def resolve_model(name: str) -> str:
    """A local folder, or a hub id fetched (or found in the cache) -> the local folder to load.
    CheckpointError (one line) when the id cannot be had; any other name is returned unchanged (the
    loader then says what is wrong with it)."""
    if not name or not is_hub_id(name):
        return name
    repo_id, _, revision = name.partition("@")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                            RepositoryNotFoundError, RevisionNotFoundError)
    except ImportError:
        raise CheckpointError(f"{name}: no such folder, and huggingface_hub is not installed to fetch it as a hub "
                              f"id (pip install -e \".[hub]\")") from None
    offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    try:
        path = snapshot_download(repo_id, revision=revision or None, allow_patterns=HUB_FILES,
                                 local_files_only=offline)
    except RevisionNotFoundError:
        raise CheckpointError(f"{name}: the hub repo {repo_id} has no revision {revision!r}") from None
    except GatedRepoError:
        raise CheckpointError(f"{name}: a gated hub repo; accept its terms and set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise CheckpointError(f"{name}: no such folder, and no hub repo {repo_id} (or it is private: set HF_TOKEN)") \
            from None
    except LocalEntryNotFoundError:
        where = "in the offline cache (HF_HUB_OFFLINE is set)" if offline else "(the hub cannot be reached)"
        raise CheckpointError(f"{name}: no such folder, and the hub id is not {where}") from None
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise CheckpointError(f"{name}: fetching the hub id failed ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not any(f.endswith(".safetensors") for f in os.listdir(path)):
        raise CheckpointError(f"{name}: the hub repo has no .safetensors weights (only those are loaded)")
    return path
