"""Support for the MONAI bundles in ``bundles/``: the offline metadata schema and what the configs call.

Validate a bundle's ``metadata.json`` without network access (``verify_metadata`` skips the download when
the schema file already exists at ``--filepath``)::

    python -m monai.bundle verify_metadata --meta_file bundles/vdm_brain_mri_2d/configs/metadata.json \\
        --filepath "$(python -c 'import monai_medgen.bundle as b; print(b.schema_path())')"
"""

from __future__ import annotations

import os

from monai_medgen.bundle import checkpoints, conventions, workflow
from monai_medgen.bundle.checkpoints import *  # noqa: F403  (verified checkpoints for train.yaml)
from monai_medgen.bundle.conventions import *  # noqa: F403  (weights layout, large_files.yml)
from monai_medgen.bundle.workflow import *  # noqa: F403  (the names the bundle configs call)

__all__ = [*workflow.__all__, *checkpoints.__all__, *conventions.__all__, "schema_path"]

SCHEMA_FILE = "meta_schema_monai_medgen.json"


def schema_path() -> str:
    """Absolute path of the JSON schema (draft-07) of a bundle's ``metadata.json``, written from the
    required keys of MONAI's bundle specification (``docs/source/mb_specification.rst``)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "schema", SCHEMA_FILE)
