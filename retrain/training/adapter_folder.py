"""The adapter folder: peft's files plus `carecycle-adapter.json`, a manifest with a checksum.

A folder is written under a hidden `.NAME.partial` name and renamed into place only when
complete, so a folder named like an adapter always holds a finished one.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from retrain.training.errors import AdapterIntegrityError

MANIFEST = "carecycle-adapter.json"
REQUIRED = ("adapter_config.json", "adapter_model.safetensors")


def partial_path(output_dir: Path) -> Path:
    """Where a run writes before the rename; removed by the runner when a run fails."""
    output_dir = Path(output_dir)
    return output_dir.with_name(f".{output_dir.name}.partial")


def checksummed_files(folder: Path) -> list[Path]:
    """The weight and config files the checksum covers (peft's `adapter_*` files), sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.name.startswith("adapter_"))


def file_digests(folder: Path) -> dict[str, str]:
    return {path.name: _sha256(path) for path in checksummed_files(folder)}


def combined_checksum(digests: dict[str, str]) -> str:
    lines = "".join(f"{name}\t{digest}\n" for name, digest in sorted(digests.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def finish(partial: Path, output_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Add files + checksum to `manifest`, write it, flush to disk and rename `partial` to `output_dir`."""
    digests = file_digests(partial)
    manifest = {**manifest, "files": digests, "checksum": combined_checksum(digests)}
    (partial / MANIFEST).write_text(json.dumps(manifest, indent=2))
    for path in checksummed_files(partial) + [partial / MANIFEST]:
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    os.rename(partial, output_dir)  # atomic on one file system; fails if output_dir exists
    return manifest


def verify_adapter(path: Path) -> dict[str, Any]:
    """Recompute the checksum of an adapter folder; return its manifest or raise `AdapterIntegrityError`."""
    folder = Path(path)
    manifest = _read_manifest(folder)
    missing = [name for name in (*REQUIRED, *manifest.get("files", {})) if not (folder / name).is_file()]
    if missing:
        raise AdapterIntegrityError(f"adapter {folder}: missing file(s) {sorted(set(missing))}")
    digests = file_digests(folder)
    changed = sorted(name for name in digests.keys() | manifest["files"].keys()
                     if digests.get(name) != manifest["files"].get(name))
    if changed or combined_checksum(digests) != manifest.get("checksum"):
        raise AdapterIntegrityError(
            f"adapter {folder}: checksum mismatch in {changed or ['the manifest checksum']}; the folder is corrupt "
            "or was changed after training: retrain it or restore it from a backup"
        )
    return manifest


def _read_manifest(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise AdapterIntegrityError(f"adapter {folder} does not exist")
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        raise AdapterIntegrityError(f"adapter {folder} has no {MANIFEST}: it was not written by carecycle training")
    except ValueError as exc:
        raise AdapterIntegrityError(f"adapter {folder}: {MANIFEST} is not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise AdapterIntegrityError(f"adapter {folder}: {MANIFEST} lacks its 'files' digests")
    return manifest


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
