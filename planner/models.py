"""ModelSpec from a catalog name, a local config.json (or a model directory), or a Hugging Face hub id.

Catalog names and local files are read without importing transformers, so `planner estimate` stays fast.
Hub ids are read from the local Hugging Face cache first. When the config is not cached, the hub is asked
only if it answers a TCP connection within ``HUB_CONNECT_TIMEOUT_S`` (huggingface_hub would otherwise retry
for half a minute before giving up); offline (``HF_HUB_OFFLINE``) or unreachable, the error says so at once
and names the catalog entry of the same architecture, if there is one (``Qwen/Qwen2.5-7B`` -> ``qwen2.5-7b``).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from planner import catalog, family_config
from planner.config_fields import check_config, shown
from planner.errors import PlannerError
from planner.specs import ModelSpec

# Defaults for keys a config.json leaves out: transformers' config classes, in planner/family_config.py (read
# there by the parameter counter and the step simulator too).
_KNOWN_GPT2_KEYS = ("n_embd", "n_layer", "n_head")
# Families without experts (transformers' configuration_<family>.py has no expert fields).
_DENSE_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "starcoder2")


def _require_int(cfg: dict[str, Any], key: str, name: str) -> int:
    if key not in cfg:
        raise PlannerError(f"model {name!r}: config is missing {key!r}.")
    value = cfg[key]
    if not isinstance(value, int) or isinstance(value, bool):
        raise PlannerError(f"model {name!r}: {key!r} must be an integer, got {value!r}.")
    if value < 1:
        raise PlannerError(f"model {name!r}: {key!r} must be positive, got {value}.")
    return value


def _optional_int(
    cfg: dict[str, Any], key: str, name: str, default: int, minimum: int = 1, allow_null: bool = True
) -> int:
    """An optional integer field: absent (or null, where transformers allows it) gives ``default``; anything
    else must be an int >= minimum."""
    value = cfg.get(key)
    if value is None and key in cfg and not allow_null:
        raise PlannerError(f"model {name!r}: {key!r} must be a positive integer, got null.")
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise PlannerError(f"model {name!r}: {key!r} must be an integer of at least {minimum}, got {value!r}.")
    return value


# State-space and recurrent models: not transformers layers, no activation model here.
_NOT_TRANSFORMERS = ("mamba", "mamba2", "falcon_mamba", "rwkv", "jamba", "recurrent_gemma", "xlstm")


def spec_from_config(cfg: dict[str, Any], name: str, source: str = "catalog") -> ModelSpec:
    """Normalise a Hugging Face config dict into a ModelSpec."""
    if not isinstance(cfg, dict):
        raise PlannerError(f"model {name!r}: config.json must hold a JSON object.")
    if "text_config" in cfg and "hidden_size" not in cfg and isinstance(cfg["text_config"], dict):
        cfg = {**cfg["text_config"], "architectures": cfg.get("architectures")}
    model_type = cfg.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise PlannerError(f"model {shown(name)}: config has no 'model_type'.")
    check_config(cfg, name)  # every field planner reads, in one place (planner/config_fields.py)
    if model_type in _NOT_TRANSFORMERS:
        raise PlannerError(
            f"model {name!r} is a {model_type!r} model (state-space or recurrent), which planner does not "
            "estimate; it supports decoder-only transformers (llama, mistral, qwen, gemma, phi, gpt2, MoE)."
        )
    if model_type == "gpt2" or all(k in cfg for k in _KNOWN_GPT2_KEYS):
        hidden = _require_int(cfg, "n_embd", name)
        layers = _require_int(cfg, "n_layer", name)
        heads = _require_int(cfg, "n_head", name)
        if hidden % heads:
            raise PlannerError(f"model {name!r}: n_embd ({hidden}) must be divisible by n_head ({heads}).")
        inner = _optional_int(cfg, "n_inner", name, family_config.UNKNOWN_MLP_RATIO * hidden)
        return ModelSpec(
            name=name,
            model_type=model_type,
            hidden_size=hidden,
            num_layers=layers,
            num_heads=heads,
            num_kv_heads=heads,
            head_dim=hidden // heads,
            intermediate_size=int(inner),
            vocab_size=_require_int(cfg, "vocab_size", name),
            max_position_embeddings=_optional_int(cfg, "n_positions", name,
                                                  family_config.CLASS_DEFAULTS["gpt2"]["n_positions"],
                                                  allow_null=False),
            tie_word_embeddings=family_config.tie_word_embeddings("gpt2", cfg),
            source=source,
            config=cfg,
        )
    hidden = _require_int(cfg, "hidden_size", name)
    layers = _require_int(cfg, "num_hidden_layers", name)
    heads = _require_int(cfg, "num_attention_heads", name)
    kv_heads = family_config.num_kv_heads(model_type, cfg, heads)
    if not isinstance(kv_heads, int) or kv_heads < 1:
        raise PlannerError(f"model {name!r}: 'num_key_value_heads' must be a positive integer, got {kv_heads!r}.")
    head_dim = family_config.head_dim(model_type, cfg, hidden, heads)
    if head_dim is None:  # neither given nor declared by the family, and hidden // heads leaves a remainder
        raise PlannerError(
            f"model {name!r}: hidden_size ({hidden}) must be divisible by num_attention_heads ({heads}) "
            "when head_dim is not given."
        )
    if not isinstance(head_dim, int) or head_dim < 1:
        raise PlannerError(f"model {name!r}: 'head_dim' must be a positive integer, got {head_dim!r}.")
    inter = family_config.intermediate_size(model_type, cfg, hidden)
    if not isinstance(inter, int) or inter < 1:
        raise PlannerError(f"model {name!r}: 'intermediate_size' must be a positive integer, got {inter!r}.")
    # Dense families' config classes ignore expert keys (LlamaConfig, Gemma2Config, ...), and so does planner:
    # reading them made a gemma2 config with n_routed_experts an MoE the estimator has no layer for.
    expert_key = None if model_type in _DENSE_FAMILIES else family_config.expert_key(model_type, cfg)
    num_experts = (_optional_int(cfg, expert_key, name, family_config.value(model_type, {}, expert_key, 0))
                   if expert_key else 0)
    top_k = (_optional_int(cfg, "num_experts_per_tok", name,
                           family_config.value(model_type, {}, "num_experts_per_tok", 0), minimum=0)
             if num_experts else 0)
    if num_experts and cfg.get("num_experts_per_tok") is not None and not 1 <= top_k <= num_experts:
        raise PlannerError(
            f"model {name!r}: num_experts_per_tok ({top_k}) must be between 1 and the number of experts ({num_experts})."
        )
    return ModelSpec(
        name=name,
        model_type=model_type,
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=inter,
        vocab_size=_require_int(cfg, "vocab_size", name),
        max_position_embeddings=_optional_int(cfg, "max_position_embeddings", name,
                                              family_config.max_position_embeddings(model_type, {}),
                                              allow_null=False),
        tie_word_embeddings=family_config.tie_word_embeddings(model_type, cfg),
        num_experts=num_experts,
        num_experts_per_tok=top_k,
        source=source,
        config=cfg,
    )


MAX_CONFIG_BYTES = 4 * 2**20  # a real config.json is a few KiB


def _read_config_file(path: Path, name: str) -> dict[str, Any]:
    if not path.is_file():
        raise PlannerError(f"model config {str(path)!r} is not a regular file; give a config.json or a model directory.")
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise PlannerError(
                f"model config {str(path)!r} is {size:,} bytes, far larger than any config.json (at most "
                f"{MAX_CONFIG_BYTES:,})."
            )
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise PlannerError(f"model config {str(path)!r} is not UTF-8 text; a config.json is UTF-8 JSON.") from None
    except OSError as exc:
        raise PlannerError(f"cannot read model config {str(path)!r}: {exc.strerror or exc}.") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PlannerError(f"model config {str(path)!r} is not valid JSON ({exc.msg} at line {exc.lineno}).") from None
    except RecursionError:
        raise PlannerError(f"model config {str(path)!r} nests JSON too deeply to be a config.json.") from None
    except ValueError as exc:  # Python refuses integers of more than 4300 digits (sys.int_info)
        raise PlannerError(
            f"model config {str(path)!r} holds a number no config.json has ({str(exc).split(':')[0]})."
        ) from None


def _check_remote_code(cfg: dict[str, Any], name: str, trust_remote_code: bool) -> None:
    if "auto_map" in cfg and not trust_remote_code:
        raise PlannerError(
            f"model {name!r} asks for remote code (auto_map in its config); pass --trust-remote-code to allow it."
        )


def load_model(name: str, trust_remote_code: bool = False) -> ModelSpec:
    """Resolve ``name``: catalog name, then a path to a config.json or model directory, then a hub id."""
    if not name or not name.strip():
        raise PlannerError("--model must name a catalog model, a config.json path or a hub id.")
    if name in catalog.model_names():
        return spec_from_config(catalog.model_config(name), name, "catalog")
    path = Path(name).expanduser()
    if path.exists():
        if path.is_dir():
            path = path / "config.json"
            if not path.is_file():
                raise PlannerError(f"model directory {name!r} has no config.json.")
        cfg = _read_config_file(path, name)
        _check_remote_code(cfg if isinstance(cfg, dict) else {}, name, trust_remote_code)
        return spec_from_config(cfg, path.parent.name if path.name == "config.json" else path.stem, str(path))
    if "/" in name and not name.endswith(".json"):
        return _load_from_hub(name, trust_remote_code)
    catalog.model_config(name)  # raises with suggestions
    raise AssertionError("unreachable")


# Seconds to wait for a TCP connection to the hub (or the proxy in front of it) before treating it as offline.
HUB_CONNECT_TIMEOUT_S = 2.0
# Suffixes of tuned copies of a base model (same architecture, same config shape): chat and instruction
# tunes, the Llama 2 "-hf" conversions, Gemma's "-it"; Meta's "Meta-Llama-3..." names drop the prefix.
_TUNED_SUFFIX = re.compile(r"(?:-(?:instruct|chat|it|hf|base))+$")


def catalog_name_for_hub_id(repo_id: str) -> str | None:
    """The catalog entry with the architecture of hub model ``repo_id`` (``Qwen/Qwen2.5-7B-Instruct`` ->
    ``qwen2.5-7b``), or None. Only a tuned copy's suffix is dropped, never a word that names another model."""
    name = repo_id.rsplit("/", 1)[-1].lower()
    names = catalog.model_names()
    for candidate in (name, _TUNED_SUFFIX.sub("", name)):
        for form in (candidate, candidate.removeprefix("meta-")):
            if form in names:
                return form
    return None


def _catalog_hint(repo_id: str) -> str:
    name = catalog_name_for_hub_id(repo_id)
    if name is None:
        return "pass a path to its config.json or a catalog name ('planner models')"
    return f"the catalog has its architecture as {name!r} (use --model {name}), or pass a path to its config.json"


def _hub_unreachable(endpoint: str) -> str | None:
    """None when a TCP connection to the hub (or the proxy the environment names for it) opens within
    HUB_CONNECT_TIMEOUT_S, else why not. Runs in a thread, so a slow DNS resolver cannot hold it longer."""
    import threading
    import urllib.parse
    import urllib.request

    url = urllib.parse.urlsplit(endpoint)
    host = url.hostname or ""
    port = url.port or (443 if url.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(url.scheme) if host and not urllib.request.proxy_bypass(host) else None
    if proxy:
        p = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = p.hostname or host, p.port or 80
    answer: dict[str, str] = {}

    def probe() -> None:
        import socket

        try:
            with socket.create_connection((host, port), timeout=HUB_CONNECT_TIMEOUT_S):
                answer["ok"] = ""
        except Exception as exc:  # noqa: BLE001 - refused, no route, no DNS, a test's network guard
            answer["why"] = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(HUB_CONNECT_TIMEOUT_S + 0.5)
    if "ok" in answer:
        return None
    return answer.get("why") or f"no answer within {HUB_CONNECT_TIMEOUT_S:.0f} s"


def _load_from_hub(repo_id: str, trust_remote_code: bool) -> ModelSpec:
    """A hub id: the local Hugging Face cache first; the hub only when it can be reached (see the module doc)."""
    try:
        from huggingface_hub import constants as hub_constants
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub ships with transformers
        raise PlannerError("resolving hub ids needs the huggingface_hub package.") from None
    try:
        cached = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # noqa: BLE001 - huggingface_hub rejects malformed ids (HFValidationError)
        raise PlannerError(
            f"--model {repo_id!r} is not a catalog name, an existing config.json path, or a valid hub id "
            "(owner/name)."
        ) from None
    if isinstance(cached, str):
        cfg = _read_config_file(Path(cached), repo_id)
        _check_remote_code(cfg, repo_id, trust_remote_code)
        return spec_from_config(cfg, repo_id, f"hub:{repo_id}")
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on") or bool(
        getattr(hub_constants, "HF_HUB_OFFLINE", False)
    )
    if offline:
        raise PlannerError(
            f"hub model {repo_id!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
            f"{_catalog_hint(repo_id)}."
        )
    endpoint = getattr(hub_constants, "ENDPOINT", None) or "https://huggingface.co"
    why = _hub_unreachable(endpoint)
    if why is not None:
        raise PlannerError(
            f"hub model {repo_id!r} is not in the local Hugging Face cache and the hub ({endpoint}) cannot be "
            f"reached ({why}); {_catalog_hint(repo_id)}."
        )
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(repo_id, trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - any hub/network failure is a user-facing message
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PlannerError(f"cannot resolve hub model {repo_id!r}: {first[:200]}; {_catalog_hint(repo_id)}.") from None
    return spec_from_config(config.to_dict(), repo_id, f"hub:{repo_id}")
