"""Suite-wide guards: no test reaches a model hub, and GPU tests skip cleanly on CPU."""

from __future__ import annotations

import os

import pytest

# Hub names must never trigger a download here; loading code is tested on local paths.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
