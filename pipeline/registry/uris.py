"""What a model URI says, read without MLflow: a registry alias, a fixed version, a bare name.

    models:/<name>@<alias>     the version the alias points to when the model is opened
    models:/<name>/<version>   a fixed version
    <name>                     a registered name alone: models:/<name>@champion
    runs:/..., a path, s3://   anything else is taken as given (pipeline.registry.models)

Kept apart from the registry's code so that a job's config can spell a URI out (and tell a
bare name from a local path) without importing MLflow.
"""
from __future__ import annotations

import re
from pathlib import Path

# The alias a bare registered model name stands for, and the one the registry gate moves.
DEFAULT_ALIAS = "champion"

ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/]+)$")
VERSION_URI = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")
_BARE_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


def model_uri(text: str) -> str:
    """A bare registered model name means its champion; anything else is taken as given."""
    if _BARE_MODEL_NAME.match(text) and not text.endswith(_CHECKPOINT_SUFFIXES) and not Path(text).exists():
        return f"models:/{text}@{DEFAULT_ALIAS}"
    return text
