"""Locating and compiling the SBDX/1 XSDs (once per process)."""
from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path

from lxml import etree

ROOT_XSD = "sbdx1.xsd"


def schema_dir() -> Path:
    """The ``schemas/`` folder: beside the package in a checkout or editable
    install, else the copy installed under ``<prefix>/share/sbdx-gateway``."""
    candidates = [
        Path(__file__).resolve().parent.parent / "schemas",
        Path(sys.prefix) / "share" / "sbdx-gateway" / "schemas",
    ]
    for path in candidates:
        if (path / ROOT_XSD).is_file():
            return path
    raise FileNotFoundError(f"{ROOT_XSD} not found in any of {candidates}")


@lru_cache(maxsize=1)
def load_schema() -> etree.XMLSchema:
    """Compile ``schemas/sbdx1.xsd`` (and its includes) with libxml2, once."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    doc = etree.parse(str(schema_dir() / ROOT_XSD), parser)
    return etree.XMLSchema(doc)
