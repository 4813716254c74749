"""MkDocs hook: the reference pages, generated from the code at build time (docs/reference.py)."""

from __future__ import annotations

import sys
from pathlib import Path

from mkdocs.structure.files import File

sys.path.insert(0, str(Path(__file__).resolve().parent))

import reference  # noqa: E402  (beside this file, not a package)


def on_files(files, config):
    for path, text in reference.pages().items():
        files.append(File.generated(config, path, content=text))
    return files
