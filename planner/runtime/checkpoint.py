"""Model sources as local checkpoint directories, and loading from them with one-line errors.

Everything the runtime loads comes through here, so every later step sees a plain directory:
- a checkpoint directory is used as it is, once it holds config.json and weights;
- a .gguf file is converted once into a Hugging Face directory (config.json, the weights
  dequantized to fp32 in model.safetensors so nothing is lost, the tokenizer with its chat
  template), cached under $SPECPLAN_CACHE (default ~/.cache/specplan) by the file's sha256;
- a hub id 'org/name' is its local snapshot, downloaded first when it is not cached and the
  hub answers within HUB_TIMEOUT_S (HF_HUB_OFFLINE: the cache only).
A model card has shapes and no weights: it is refused. Whatever transformers, safetensors,
tokenizers or gguf raise over a bad file becomes one InputError line here.

Only the standard library is imported at module level: planning imports this module for
hub ids and .gguf configs without importing torch.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import struct
import tempfile
from contextlib import contextmanager
from pathlib import Path

from planner.errors import InputError, MissingDependencyError, NotFoundError, SpecplanError, near_matches

CACHE_ENV = "SPECPLAN_CACHE"
HUB_TIMEOUT_S = 5.0  # one metadata request; no retries, so an unreachable hub fails in seconds
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
GGUF_MAGIC = b"GGUF"
CONVERTED_FROM = "specplan-gguf.json"  # in a converted directory: which file, which fingerprint
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_HUB_TEXT_FILES = ["*.json", "*.jinja", "*.model", "*.tiktoken", "*.txt"]  # config, tokenizer, generation config


def cache_root() -> Path:
    """Where converted checkpoints are kept: $SPECPLAN_CACHE, else ~/.cache/specplan."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "specplan")


def local_checkpoint(source: str) -> str:
    """The local Hugging Face checkpoint directory that `source` stands for.

    source: a checkpoint directory (returned as given), a .gguf file (its converted
    directory, see gguf_checkpoint) or a hub id 'org/name' (its local snapshot, see
    hub_snapshot). Raises NotFoundError for a missing path, an unknown name or a hub id
    that is neither cached nor reachable; InputError for a model card, a directory without
    config.json or weights, another kind of file, or a GGUF that cannot be converted;
    MissingDependencyError when a .gguf file needs packages that are not installed."""
    path = Path(source).expanduser()
    if path.is_dir():
        return str(_checked_directory(path))
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return str(gguf_checkpoint(path))
        raise InputError(f"{source}: a file, not a checkpoint (give a model directory with config.json and weights, "
                         "or a .gguf file)")
    if source.startswith((".", "/", "~")) or path.suffix.lower() in (".gguf", ".json", ".safetensors"):
        raise NotFoundError(f"{source}: no such file or directory")
    if _HUB_ID.fullmatch(source):
        return str(hub_snapshot(source))
    from planner.models.cards import shipped_model_names

    names = shipped_model_names()
    if source.lower() in names:
        raise InputError(f"'{source}' is a model card: shapes for planning, no weights; running needs a checkpoint "
                         "as `model` (a directory, a .gguf file or a hub id)")
    raise NotFoundError(f"'{source}': no such directory, .gguf file, hub id (org/name) or model card"
                        f"{near_matches(source, names)}")


def read_hf_config(source: str):
    """The transformers config of `source` (anything local_checkpoint takes), no weight loaded.

    Raises what local_checkpoint raises; InputError when the config cannot be read."""
    from transformers import AutoConfig

    directory = local_checkpoint(source)
    with loading(f"the config of '{source}'"):
        return AutoConfig.from_pretrained(directory)


def load_tokenizer(source: str):
    """The tokenizer of `source` (anything local_checkpoint takes).

    Raises what local_checkpoint raises; InputError when the tokenizer files cannot be read."""
    from transformers import AutoTokenizer

    directory = local_checkpoint(source)
    with loading(f"the tokenizer of '{source}'"):
        return AutoTokenizer.from_pretrained(directory)


def load_causal_lm(source: str, *, dtype):
    """The transformers causal LM of `source` (anything local_checkpoint takes) in `dtype`, on the host.

    Raises what local_checkpoint raises; InputError when the weights cannot be loaded
    (missing, truncated or not safetensors/PyTorch files)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # stdout/stderr carry the streamed text and one-line errors
    directory = local_checkpoint(source)
    with loading(f"weights from '{source}'"):
        return AutoModelForCausalLM.from_pretrained(directory, dtype=dtype)


@contextmanager
def loading(what: str):
    """Turn anything a third-party loader raises inside the block into one InputError line:
    'cannot load {what}: {the first line of the error}'. SpecplanErrors pass unchanged."""
    try:
        yield
    except SpecplanError:
        raise
    except struct.error as exc:  # a binary reader (gguf's) ran past the end of the data it was given
        raise InputError(f"cannot load {what}: the file is truncated or corrupt ({exc})") from exc
    except Exception as exc:  # transformers, safetensors, tokenizers and gguf each raise their own kinds
        raise InputError(f"cannot load {what}: {_first_line(exc)}") from exc


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().strip("'\"")
    first = text.splitlines()[0] if text else ""
    if isinstance(exc, (OSError, ValueError)) and first:
        return first
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _checked_directory(path: Path) -> Path:
    if not (path / "config.json").is_file():
        raise NotFoundError(f"{path}: no config.json in this directory")
    if not _has_weights(path):
        raise InputError(f"{path}: config.json but no weights ({' or '.join(WEIGHT_FILES[::2])}): "
                         "a config is enough to plan, not to run")
    return path


def content_fingerprint(source: str) -> str:
    """The sha256 that names the weights of `source` (anything local_checkpoint takes): for a
    .gguf file, or a directory converted from one, the GGUF file's sha256; for a directory
    with one weight file (model.safetensors or pytorch_model.bin), that file's sha256 (what
    the hub lists for it); for shards, the sha256 of one 'name sha256' line per shard in name
    order. Other files (an S3D adapter saved beside the weights) do not count. Files are read
    once per process (memoised by path, size and modification time).

    Raises what local_checkpoint raises."""
    path = Path(source).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        _checked_gguf(path, needs=())
        return _sha256(str(path.resolve()), *_stamp(path))
    directory = Path(local_checkpoint(source))
    converted = directory / CONVERTED_FROM
    if converted.is_file():
        try:
            return str(json.loads(converted.read_text())["sha256"])
        except (OSError, ValueError, KeyError, TypeError):
            raise InputError(f"{converted}: unreadable; delete {directory} so that the GGUF file is converted again") from None
    files = _weight_files(directory)
    digests = [_sha256(str(p.resolve()), *_stamp(p)) for p in files]
    if len(files) == 1:
        return digests[0]
    return hashlib.sha256("".join(f"{p.name} {d}\n" for p, d in zip(files, digests)).encode()).hexdigest()


def _weight_files(directory: Path) -> list[Path]:
    """The checkpoint's weight files: the single file, else the shards its index names."""
    for single, index in zip(WEIGHT_FILES[::2], WEIGHT_FILES[1::2]):
        if (directory / single).is_file():
            return [directory / single]
        if (directory / index).is_file():
            try:
                shards = set(json.loads((directory / index).read_text())["weight_map"].values())
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                raise InputError(f"{directory / index}: not a readable weight index") from None
            return sorted(directory / name for name in shards)
    return []


# ---------------------------------------------------------------- GGUF


def gguf_config(path) -> dict:
    """The Hugging Face config fields of the GGUF file at `path`, read from its metadata.

    Raises InputError when the file is not GGUF or transformers cannot read its
    architecture; MissingDependencyError without the gguf package."""
    from transformers import AutoConfig

    path = _checked_gguf(Path(path), needs=("gguf",))
    with loading(f"GGUF file '{path}'"):
        return AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name).to_dict()


def gguf_checkpoint(path) -> Path:
    """The Hugging Face directory converted from the GGUF file at `path`, made on first use.

    The directory is cache_root()/gguf/<sha256 of the file> and holds config.json,
    generation_config.json, model.safetensors (fp32) and the tokenizer files, chat template
    included. It is written in a temporary directory beside it and renamed into place, so it
    is complete whenever it exists; when two processes convert at once, the first rename
    wins and the other's copy is dropped. Raises InputError for a file that is not GGUF, an
    architecture transformers cannot load, or a cache that cannot be written;
    MissingDependencyError without gguf or accelerate."""
    path = _checked_gguf(Path(path), needs=("gguf", "accelerate"))
    digest = _sha256(str(path.resolve()), *_stamp(path))
    final = cache_root() / "gguf" / digest
    if final.is_dir():
        return final
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{digest[:12]}-", dir=final.parent))
    except OSError as exc:
        raise InputError(f"cannot write converted checkpoints under {final.parent} ({exc.strerror})") from None
    try:
        _convert_gguf(path, work)
        (work / CONVERTED_FROM).write_text(json.dumps({"gguf": str(path.resolve()), "sha256": digest}, indent=2) + "\n")
        try:
            os.rename(work, final)
        except OSError:
            if not final.is_dir():
                raise  # not a lost race: report it below
    except OSError as exc:
        raise InputError(f"cannot write the conversion of '{path}' under {final.parent} ({exc.strerror or exc})") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def _convert_gguf(path: Path, out: Path) -> None:
    """Write the GGUF at `path` into `out` as a dense fp32 Hugging Face checkpoint."""
    import torch
    import transformers
    from safetensors.torch import save_model
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # (the GGUF dequantizer's own bar still shows, once per file)

    # Dense weights whether or not GGUF matmul kernels are installed (transformers >= 5 can keep blocks packed).
    options = {"quantization_config": transformers.GgufConfig(dequantize=True)} if hasattr(transformers, "GgufConfig") else {}
    with loading(f"GGUF file '{path}'"):
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                                  dtype=torch.float32, **options)
    # transformers will not save a model loaded through its GGUF quantizer: write the parts.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.save_pretrained(out)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(out)
    save_model(model, str(out / "model.safetensors"), metadata={"format": "pt"})  # tied weights stored once
    tokenizer.save_pretrained(out)


def _checked_gguf(path: Path, *, needs: tuple[str, ...]) -> Path:
    """`path` once it starts with GGUF's magic bytes and the packages that read it are installed."""
    import importlib.util

    try:
        with open(path, "rb") as handle:
            magic = handle.read(len(GGUF_MAGIC))
    except FileNotFoundError:
        raise NotFoundError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    if magic != GGUF_MAGIC:
        raise InputError(f"{path}: not a GGUF file (it does not start with the GGUF magic bytes)")
    missing = [name for name in needs if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingDependencyError(f"reading .gguf files needs {' and '.join(missing)}: "
                                     'pip install ".[gguf]" (from a clone of specplan)')
    return path


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


@functools.lru_cache(maxsize=None)
def _sha256(resolved: str, size: int, mtime_ns: int) -> str:
    """The file's content fingerprint; size and mtime only key the memo (a rewrite rehashes)."""
    digest = hashlib.sha256()
    with open(resolved, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- hub


def hub_snapshot(repo_id: str, *, weights: bool = True) -> Path:
    """The local snapshot directory of hub model `repo_id`: its config and tokenizer files,
    and with `weights` its safetensors (else PyTorch) weights.

    The local Hugging Face cache is used when it has them. Otherwise, unless HF_HUB_OFFLINE
    is set, the hub is asked once with a HUB_TIMEOUT_S timeout and no retries before
    anything is downloaded. Raises NotFoundError when the model is not cached and the hub is
    offline, unreachable or does not know it; InputError when the download fails."""
    from huggingface_hub import HfApi, constants, snapshot_download

    cached = _cached_snapshot(repo_id)
    if cached is not None and (cached / "config.json").is_file() and (_has_weights(cached) or not weights):
        return cached
    what = "its weights" if weights and cached is not None else "it"
    if constants.HF_HUB_OFFLINE:
        raise NotFoundError(f"'{repo_id}': no such local directory, the local Hugging Face cache does not have {what}, "
                            "and HF_HUB_OFFLINE is set "
                            "(download it first, or give a local directory or .gguf file)")
    try:
        info = HfApi().model_info(repo_id, timeout=HUB_TIMEOUT_S)  # HfApi() reads the endpoint now
    except Exception as exc:  # connection errors, unknown or gated repositories
        raise NotFoundError(f"'{repo_id}': no such local directory, the local Hugging Face cache does not have {what}, "
                            f"and the hub cannot be asked ({_first_line(exc)})") from None
    files = [s.rfilename for s in info.siblings or ()]
    patterns = list(_HUB_TEXT_FILES) if weights else ["config.json"]
    if weights:
        patterns.append("model*.safetensors" if any(f.endswith(".safetensors") for f in files) else "pytorch_model*.bin")
    with loading(f"'{repo_id}' from the hub"):
        snapshot = Path(snapshot_download(repo_id, revision=info.sha, allow_patterns=patterns, etag_timeout=HUB_TIMEOUT_S))
    return _checked_directory(snapshot) if weights else snapshot


def _cached_snapshot(repo_id: str) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # LocalEntryNotFoundError and its kin: not cached
        return None


def _has_weights(directory: Path) -> bool:
    return any((directory / name).is_file() for name in WEIGHT_FILES)
