"""The fail-safe policy every command applies, in one place: check before any work.

1. **Outputs.** A command never writes over an existing file, nor into a non-empty directory it
   did not create: a directory is "its own" when it holds the command's marker file
   (``trial.json``, ``attack.json``, ``k0.json``, ``manifest.json``, ``summary.json``, a resumable
   ``.work``/progress directory) — that is the resume / rerun case. Anything else is an error
   naming the path (``--force`` where a command has it says what it replaces). The output's
   nearest existing parent must be a writable directory (probed by creating and removing a
   temporary file, which also catches read-only mounts and immutable directories).
2. **Inputs.** Files and directories named on the command line must exist, as the kind expected.
3. **Models.** :func:`resolve_model` decides local path vs. Hugging Face Hub id with one rule:
   a value is a hub id only if it has the hub's ``owner/name`` shape (one ``/``, hub characters,
   not starting with ``.``, ``/`` or ``~``) *and* its ``owner`` part is not a local path;
   everything else is a local path, and a local path that does not exist is an error — never a
   hub lookup (``./x``, ``/abs``, ``~/x``, ``a/b/c``; ``models/nope`` when ``models/`` exists).
   A hub id that is neither cached nor reachable is one line too, before any work.
   :func:`check_model` then reads a local model directory the way loading will, without loading
   weights: ``config.json``, a supported family (:mod:`irr_ray.models.families`), complete
   safetensors files (header and size checked: a truncated or random file is refused), a
   tokenizer with a chat template, and refusal tokens it knows.
4. **Config values** are validated by the typed configs at load time (:mod:`irr_ray.config`).

Failures are :class:`~irr_ray.errors.IrrRayError`: one line on stderr, exit 2 (:mod:`irr_ray.cli`).
"""

from __future__ import annotations

import json
import os
import re
import struct
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from irr_ray.errors import IrrRayError, UnsupportedArchitectureError

# Marker files by which a command recognises an output directory as its own (rerun / resume).
OWN_MARKERS: dict[str, tuple[str, ...]] = {
    "train": ("trial.json",),
    "attack": ("attack.json", "k0.json"),
    "eval": ("k0.json",),
    "data": ("manifest.json", ".work"),
    "organism": ("summary.json",),
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


class OutputExistsError(IrrRayError):
    """An output path holds a file or a directory the command did not create."""


# ---------------------------------------------------------------------------------------- outputs


def check_writable(path: str | Path, what: str) -> None:
    """The nearest existing ancestor of ``path`` is a directory this process can create files in."""
    p = Path(path).expanduser().absolute()
    anc = p.parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise IrrRayError(f"cannot create {what} {p}: {anc} is a file, not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".irr-ray-probe-", dir=anc)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise IrrRayError(f"cannot write {what} {p}: {anc} is not writable ({exc.strerror or exc})") from None


def check_output_dir(path: str | Path, command: str, what: str = "--out", force: bool = False) -> Path:
    """An output directory the command may write: absent, empty, or its own (``OWN_MARKERS``).

    ``force`` allows replacing a foreign non-empty directory (never a file); it says so on stderr.
    """
    p = Path(path).expanduser()
    if p.is_symlink() and not p.exists():
        raise OutputExistsError(f"{what} {p} is a dangling symbolic link; choose another path")
    if p.exists() and not p.is_dir():
        raise OutputExistsError(f"{what} {p} is an existing file; irr-ray never writes over a file it did not "
                                "create: choose another path or remove it")
    if p.is_dir():
        entries = list(p.iterdir())
        own = any((p / m).exists() for m in OWN_MARKERS.get(command, ()))
        if entries and not own:
            if not force:
                raise OutputExistsError(
                    f"{what} {p} is a non-empty directory that `irr-ray {command}` did not create "
                    f"({len(entries)} entries, no {' / '.join(OWN_MARKERS.get(command, ('marker',)))}): choose "
                    "an empty or new directory")
            import sys

            print(f"irr-ray {command}: --force: replacing the contents of {p} ({len(entries)} entries)",
                  file=sys.stderr)
    check_writable(p, what)
    return p


def check_output_file(path: str | Path, what: str, own: bool = False) -> Path:
    """An output file: absent, or (``own``) one the command wrote before; never a directory."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise OutputExistsError(f"{what} {p} is a directory, expected a file path")
    if p.exists() and not own:
        raise OutputExistsError(f"{what} {p} exists; irr-ray never writes over a file it did not create")
    check_writable(p, what)
    return p


# ----------------------------------------------------------------------------------------- inputs


def check_input_dir(path: str | Path, what: str, needs: Sequence[str] = ()) -> Path:
    p = Path(path).expanduser()
    holding = f" (expected a directory with {', '.join(needs)})" if needs else ""
    if not p.exists():
        raise IrrRayError(f"{what} {p} does not exist{holding}")
    if not p.is_dir():
        raise IrrRayError(f"{what} {p} is a file, expected a directory{holding}")
    for name in needs:
        if not (p / name).is_file():
            raise IrrRayError(f"{what} {p} has no {name}")
    return p


# ----------------------------------------------------------------------------------------- models


def looks_like_hub_id(value: str, cwd: Path | None = None) -> bool:
    """``owner/name`` whose ``owner`` is not a local path (see the module docstring)."""
    if not _HUB_ID.match(value) or os.sep != "/" and os.sep in value:
        return False
    base = cwd or Path.cwd()
    return not (base / value.split("/")[0]).exists()


def resolve_model(value: str, what: str = "--model") -> tuple[str, Path | None]:
    """``(value, local directory or None for a hub id)``; a missing local path is an error."""
    if not value or not str(value).strip():
        raise IrrRayError(f"{what} is empty")
    local = Path(value).expanduser()
    if local.exists():
        if not local.is_dir():
            raise IrrRayError(f"model {value} ({what}) is a file, expected a Hugging Face model directory")
        return value, local
    if looks_like_hub_id(value):
        _check_hub_model(value, what)
        return value, None
    raise IrrRayError(f"model directory {value} ({what}) does not exist (a local path, so no hub lookup)")


def _check_hub_model(repo: str, what: str) -> None:
    """A hub id is usable: cached, or (online) its config.json downloads. One line otherwise."""
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.constants import HF_HUB_OFFLINE
    except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
        return
    try:
        hf_hub_download(repo, "config.json", local_files_only=True)
        return
    except Exception:  # noqa: BLE001 - not cached: try the hub below
        pass
    if HF_HUB_OFFLINE:
        raise IrrRayError(f"model {repo} ({what}) is not a local directory and not in the Hugging Face cache "
                          "(HF_HUB_OFFLINE is set); pass a local model directory")
    import socket
    from urllib.parse import urlparse

    from huggingface_hub.constants import ENDPOINT

    url = urlparse(ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=5).close()
    except OSError as exc:
        raise IrrRayError(f"model {repo} ({what}) is not a local directory, not in the Hugging Face cache, and "
                          f"the hub ({url.hostname}) is unreachable ({exc.strerror or exc})") from None
    try:
        from huggingface_hub import HfApi

        HfApi().model_info(repo, timeout=15)
    except Exception as exc:  # noqa: BLE001 - gated, missing: one line for all of them
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise IrrRayError(f"model {repo} ({what}) is not a local directory and not a model the Hugging Face "
                          f"Hub serves ({type(exc).__name__}: {first})") from None


def check_safetensors(path: Path) -> list[str]:
    """Header and size of one safetensors file; returns its tensor names. Never reads the data."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError("shorter than a safetensors header")
            (n,) = struct.unpack("<Q", head)
            if n <= 1 or 8 + n > size or n > 100 * 1024 * 1024:
                raise ValueError("header length out of range (not a safetensors file)")
            header = json.loads(f.read(n))
    except (ValueError, UnicodeDecodeError) as exc:
        raise IrrRayError(f"unreadable weights {path}: {exc}") from None
    except OSError as exc:
        raise IrrRayError(f"unreadable weights {path}: {exc.strerror or exc}") from None
    if not isinstance(header, dict):
        raise IrrRayError(f"unreadable weights {path}: header is not a mapping")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            end = max(end, int(info["data_offsets"][1]))
        except (KeyError, TypeError, IndexError, ValueError):
            raise IrrRayError(f"unreadable weights {path}: bad entry for tensor {name!r}") from None
    if 8 + n + end != size:
        raise IrrRayError(f"unreadable weights {path}: {size} bytes, the header describes {8 + n + end} "
                          "(truncated or corrupt file)")
    return [k for k in header if k != "__metadata__"]


def _weight_files(d: Path) -> list[Path]:
    index = d / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError):
            raise IrrRayError(f"unreadable weights index {index}") from None
        missing = [s for s in shards if not (d / s).is_file()]
        if missing:
            raise IrrRayError(f"model {d}: weight shard {missing[0]} listed in {index.name} is missing")
        return [d / s for s in shards]
    if (d / "model.safetensors").is_file():
        return [d / "model.safetensors"]
    found = sorted(d.glob("*.safetensors"))
    if found:
        return found
    raise IrrRayError(f"model {d} has no safetensors weights (model.safetensors); irr-ray never unpickles "
                      "*.bin weights")


def _read_config(d: Path) -> dict:
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise IrrRayError(f"model directory {d} has no config.json (not a Hugging Face model directory)")
    try:
        config = json.loads(cfg_path.read_text())
    except (ValueError, OSError) as exc:
        raise IrrRayError(f"unreadable {cfg_path}: {exc}") from None
    if not isinstance(config, dict) or not config.get("model_type"):
        raise IrrRayError(f"{cfg_path} has no model_type")
    return config


def _check_family(d: Path, config: dict) -> str:
    """A registered model_type, or one whose module layout matches a known structure (meta device)."""
    from irr_ray.models import families

    mt = str(config["model_type"])
    if mt == "gemma3":
        mt = str((config.get("text_config") or {}).get("model_type", mt))
    if mt in families.LAYOUTS:
        return mt
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        hf_config = AutoConfig.from_pretrained(str(d))
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(hf_config)
    except Exception as exc:  # noqa: BLE001 - an unknown or non-causal-LM config
        raise UnsupportedArchitectureError(
            f"unsupported architecture in {d / 'config.json'} (model_type={mt!r}): transformers cannot build "
            f"a causal LM from it ({type(exc).__name__}); supported model_types: "
            f"{', '.join(sorted(families.LAYOUTS))}") from None
    if not any(families._match(model, mt, spec) for spec in families._STRUCTURAL):
        looked_for = " or ".join(families._describe(spec) for spec in (families._LLAMA_LIKE, families._GPT2))
        raise families._unsupported(model, mt, f"no known decoder-block layout in {d / 'config.json'} "
                                               f"(looked for decoder blocks at {looked_for})")
    return mt


def _check_tokenizer(d: Path, config: dict, model_type: str, refusal_tokens: Iterable[str | int] | None,
                     chat: bool) -> None:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(d))
    except Exception as exc:  # noqa: BLE001 - missing / corrupt tokenizer files
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise IrrRayError(f"model {d}: tokenizer cannot be loaded ({type(exc).__name__}: {first})") from None
    if chat and getattr(tok, "chat_template", None) is None:
        raise IrrRayError(f"model {d}: tokenizer has no chat template (chat_template.jinja or tokenizer_config.json "
                          "chat_template); use an instruct model's tokenizer")
    tokens = list(refusal_tokens) if refusal_tokens else None
    source = "refusal_tokens"
    if not tokens:
        tokens = config.get("irr_ray_refusal_tokens") or None
        source = f"{d / 'config.json'} irr_ray_refusal_tokens"
    if not tokens:
        return  # the family default: unknown ones are dropped at load time, with a warning
    vocab = len(tok)
    for t in tokens:
        if isinstance(t, int):
            if not 0 <= t < vocab:
                raise IrrRayError(f"refusal token id {t} ({source}) is outside the vocabulary of {d} ({vocab})")
        elif not tok.encode(str(t), add_special_tokens=False):
            raise IrrRayError(f"refusal token {t!r} ({source}) encodes to nothing with the tokenizer of {d}")


def check_model(value: str, what: str = "--model", refusal_tokens: Iterable[str | int] | None = None,
                chat: bool = True, tokenizer: bool = True) -> str:
    """Everything loading ``value`` needs, checked without loading weights; returns ``value``.

    A hub id is checked only for existence (its files are fetched when it loads)."""
    value = str(value)
    _, local = resolve_model(value, what)
    if local is None:
        return value
    config = _read_config(local)
    mt = _check_family(local, config)
    for f in _weight_files(local):
        check_safetensors(f)
    if tokenizer:
        _check_tokenizer(local, config, mt, refusal_tokens, chat)
    return value


def check_models(models: Iterable[tuple[str | None, str]], **kw) -> None:
    """``check_model`` for each ``(value, what)`` given (None values skipped, each checked once)."""
    seen: set[str] = set()
    for value, what in models:
        if value and value not in seen:
            seen.add(value)
            check_model(value, what, **kw)


# ---------------------------------------------------------------------------------------- studies


def check_study_dir(root: str | Path, what: str = "study directory") -> Path:
    """A study directory to write into: a directory (or absent) whose parent is writable."""
    p = Path(root).expanduser()
    if p.exists() and not p.is_dir():
        raise OutputExistsError(f"{what} {p} is an existing file; choose another --study-dir")
    check_writable(p / "config.yaml", what)
    return p


def check_study_models(cfg, stages: Sequence[str]) -> None:
    """The study's models and data source before any stage runs. Paths the organism stage will
    build are skipped while it has not built them yet."""
    org_dir = Path(cfg.organism.dir) if cfg.organism is not None and cfg.organism.dir else None
    builds = org_dir is not None and "organism" in stages

    def built_later(value: str | None) -> bool:
        return bool(builds and value and Path(value).is_relative_to(org_dir) and not Path(value).exists())

    needed = []
    if {"data", "sweep", "attack"} & set(stages):
        needed.append((cfg.source_model, "source_model"))
    if "sweep" in stages:
        needed.append((cfg.train.model, "train.model"))
    if "data" in stages:
        needed.append((cfg.data.source_model, "data.source_model"))
    if "attack" in stages:
        needed.append((cfg.base_model, "base_model"))
    for value, what in needed:
        if value and not built_later(value):
            if org_dir is not None and Path(value).is_relative_to(org_dir) and not Path(value).exists():
                raise IrrRayError(f"{what} {value} does not exist: build the organism first "
                                  f"(`irr-ray organism build --out {org_dir}`) or run the whole study")
    check_models([(v, w) for v, w in needed if v and not built_later(v)])
    if "data" in stages and cfg.data.source and not built_later(cfg.data.source):
        src = Path(cfg.data.source).expanduser()
        if not src.exists() and (src.is_absolute() or not looks_like_hub_id(cfg.data.source)):
            raise IrrRayError(f"data.source {cfg.data.source} does not exist")
