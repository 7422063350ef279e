"""The one lister of manifest files, shared by the loader and the watcher."""

from __future__ import annotations

from pathlib import Path

__all__ = ["YAML_SUFFIXES", "yaml_files"]

YAML_SUFFIXES = (".yaml", ".yml")


def yaml_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    found = [
        p for p in path.rglob("*")
        if p.suffix in YAML_SUFFIXES and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    ]
    return sorted(found)
