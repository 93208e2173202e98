"""Make the running (throwaway) venv look, to pip, like the GPU machine's image: an empty
`.dist-info` for each image package our dependencies touch, at the image's version where
KINDS.md gives it (scripts/gpu_image.txt), else at the version scripts/gpu_wheels.sh resolved
(WHEELS/image-resolved.txt). Packages the wheels carry get no stub: pip installs them for real.
The stubs declare no dependencies of their own, so the resolver and `pip check` judge only
the carried wheels against the image. Used by `scripts/gpu_check.sh --dry-run`.

    python scripts/gpu_stub_image.py WHEELS_DIR
"""

from __future__ import annotations

import re
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, tuple[str, str]]:
    """{normalised name: (name, version)} of a file of `name==version` lines."""
    out = {}
    for line in path.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.strip().split("==")
            out[norm(name)] = (name, version)
    return out


def main() -> None:
    wheels = Path(sys.argv[1])
    versions = pins(wheels / "image-resolved.txt") | pins(ROOT / "scripts" / "gpu_image.txt")
    carried = pins(wheels / "requirements.txt")
    site = Path(sysconfig.get_paths()["purelib"])
    made = []
    for key, (name, version) in sorted(versions.items()):
        if key in carried:
            continue
        info = site / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir(parents=True, exist_ok=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        (info / "INSTALLER").write_text("gpu_stub_image\n")
        # RECORD lists the stub's own files, so that pip can uninstall it like any package.
        rel = info.name
        (info / "RECORD").write_text(
            "".join(f"{rel}/{f},,\n" for f in ("METADATA", "INSTALLER", "RECORD"))
        )
        made.append(f"{name}=={version}")
    print(f"{len(made)} image stubs in {site}: {', '.join(made)}")


if __name__ == "__main__":
    main()
