"""The models shipped inside the package (built by scripts/build_tiny_model.py and
scripts/build_chain_model.py), by the name `model.name_or_path` gives them."""

from pathlib import Path

TINY_DIR = Path(__file__).parent / "tiny"
EMBEDDED = {"tiny": TINY_DIR, "tiny_chain": TINY_DIR.parent / "tiny_chain"}
