"""Model resolution (tiny / store URI / local dir / Hugging Face name) and processor loading."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

TINY = "tiny"
TINY_WEAK = "tiny-weak"  # the tiny model with weak pretrained perception (evoquality.pretrain)
_COMPLETE = ".evoquality-complete"
ASSETS = Path(__file__).resolve().parent / "assets"


def committed_weak_base() -> Path:
    """The committed `tiny-weak` build of the current recipe version (`evoquality.pretrain`)."""
    from evoquality.pretrain import WEAK_VERSION

    return ASSETS / f"{TINY_WEAK}-v{WEAK_VERSION}"


class ModelNotFoundError(FileNotFoundError):
    """The model named in the spec cannot be found; the message says where it was looked for."""


def _looks_local(name: str) -> bool:
    return (
        name.startswith(("/", "./", "../", "~"))
        or name in (".", "..")
        or name.endswith("/")
        or name.count("/") > 1
        or (os.sep != "/" and os.sep in name)
    )


def _lock(path: Path):
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path))


def _resolve_tiny(cache_dir: Path, seed: int = 0) -> str:
    from evoquality.prompts import prompts_fingerprint
    from evoquality.tiny_model import MARKER_FILE, TINY_VERSION, build_tiny_model_atomic

    # A new architecture or new prompts (its tokenizer and warm-up learn them) never reuse a build.
    target = cache_dir / f"{TINY}-v{TINY_VERSION}-{prompts_fingerprint()[:8]}"
    if (target / MARKER_FILE).exists():
        return str(target)
    with _lock(cache_dir / f"{TINY}.lock"):
        build_tiny_model_atomic(target, seed=seed)
    return str(target)


def _resolve_tiny_weak() -> str:
    from evoquality.pretrain import WEAK_MARKER_FILE

    path = committed_weak_base()
    if not (path / WEAK_MARKER_FILE).exists():
        raise ModelNotFoundError(
            f"the committed {TINY_WEAK} base {path} is missing; rebuild it with "
            f"`evoquality make-tiny-model --pretrain {path}`"
        )
    return str(path)


def _resolve_store(uri: str, cache_dir: Path, store_factory: Callable[..., Any] | None) -> str:
    if store_factory is None:
        from evoquality.storage import open_store

        store_factory = open_store
    digest = hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]
    target = cache_dir / f"store-{digest}"
    if (target / _COMPLETE).exists():
        return str(target)
    with _lock(cache_dir / f"store-{digest}.lock"):
        if (target / _COMPLETE).exists():
            return str(target)
        store = store_factory(uri)
        tmp = Path(tempfile.mkdtemp(prefix=f".store-{digest}.", dir=cache_dir))
        try:
            try:
                store.get_dir("", tmp / "model")
            except FileNotFoundError as exc:
                raise ModelNotFoundError(f"model {uri}: no files there ({exc})") from None
            if not (tmp / "model" / "config.json").exists():
                raise ModelNotFoundError(f"model {uri}: not a model directory (no config.json)")
            (tmp / "model" / _COMPLETE).write_text(uri + "\n")
            if target.exists():
                shutil.rmtree(target)  # a half-finished earlier download (no marker)
            os.replace(tmp / "model", target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def _check_hub(name: str, revision: str | None) -> str:
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    if not offline:
        return name
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(name, revision=revision, local_files_only=True)
    except Exception as exc:  # LocalEntryNotFoundError, HFValidationError, ...
        raise ModelNotFoundError(
            f"model {name!r} (revision {revision or 'default'}) is not in the Hugging Face cache "
            f"and HF_HUB_OFFLINE=1 forbids downloading it ({type(exc).__name__}); use 'tiny', "
            "a local model directory, an s3:// / file:// URI, or pre-fetch it into HF_HOME"
        ) from None
    return name


def resolve_model(
    name_or_uri: str,
    cache_dir: Path,
    revision: str | None = None,
    store_factory: Callable[..., Any] | None = None,
) -> str:
    """A name that `from_pretrained` (and vLLM) can load.

    * ``tiny``: the tiny model, built once into ``cache_dir/tiny-v<version>-<prompts>`` (file
      lock + atomic rename);
    * ``tiny-weak``: the tiny model with weak pretrained perception: the committed build of
      `evoquality.pretrain`'s recipe in ``evoquality/assets/tiny-weak-v<recipe version>`` (a
      CPU build is not bit-identical across machines, so the experiment never rebuilds it);
    * ``s3://...`` / ``file://...``: the model directory, downloaded once into ``cache_dir`` (keyed
      by a hash of the URI; ``store_factory(uri)`` opens the store, default
      ``evoquality.storage.open_store``);
    * an existing local directory: itself;
    * a path that looks local but does not exist: `ModelNotFoundError`;
    * anything else: a Hugging Face hub name, returned as is (checked against the local cache when
      ``HF_HUB_OFFLINE=1``).
    """
    cache_dir = Path(cache_dir)
    name = name_or_uri.strip()
    if not name:
        raise ModelNotFoundError("empty model name")
    if name == TINY:
        return _resolve_tiny(cache_dir)
    if name == TINY_WEAK:
        return _resolve_tiny_weak()
    if name.startswith(("s3://", "file://")):
        return _resolve_store(name, cache_dir, store_factory)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelNotFoundError(f"model directory {path} has no config.json")
        return str(path)
    if _looks_local(name) or path.exists():
        raise ModelNotFoundError(f"model directory {path} does not exist")
    return _check_hub(name, revision)


def load_processor(
    model_path: str, min_pixels: int, max_pixels: int, revision: str | None = None
) -> Any:
    """The model's processor with the spec's pixel caps and left padding (for generation).

    transformers 5.20+: the caps must be passed to ``from_pretrained`` as ``min_pixels`` /
    ``max_pixels`` (a bare ``size=`` is overridden by the saved config); checked afterwards.
    """
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(
        model_path,
        revision=revision,
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        padding_side="left",
    )
    size = processor.image_processor.size
    got = (_size_get(size, "shortest_edge"), _size_get(size, "longest_edge"))
    if got != (min_pixels, max_pixels):
        raise RuntimeError(
            f"processor of {model_path} kept pixel caps {got}, expected {(min_pixels, max_pixels)}"
        )
    processor.tokenizer.padding_side = "left"
    # from_pretrained also hands the caps to the tokenizer, whose init kwargs the processor then
    # passes to every image-processor call (a FutureWarning in 5.20, an error from 5.23): the caps
    # already live in image_processor.size, so drop the copies.
    for key in ("min_pixels", "max_pixels"):
        processor.tokenizer.init_kwargs.pop(key, None)
    return processor


def _size_get(size: Any, key: str) -> Any:
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)
