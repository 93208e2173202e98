#!/usr/bin/env bash
# Download here, from PyPI, exactly the wheels the lent GPU machine lacks for this package, so
# that scripts/gpu_check.sh can install them there (the machine has no network).
#
#   bash scripts/gpu_wheels.sh            # -> .gpu-wheels/ (git-ignored), sizes printed
#   WITH_WANDB=1 bash scripts/gpu_wheels.sh   # also wandb and its dependencies (~+25 MiB)
#
# The machine's Python is 3.12 on manylinux x86_64, and its image already holds torch,
# transformers, peft, accelerate, pandas, pyarrow and ~190 more (scripts/gpu_image.txt). So:
#   1. resolve our dependencies (pyproject's, plus trl for the benchmark and a setuptools new
#      enough to build this package without build isolation) for that interpreter and
#      platform, pinned to the image's known versions (transformers 5.17, torch 2.11, ...):
#      `pip install --dry-run --report` reads metadata only, so torch's CUDA wheel is never
#      downloaded;
#   2. download, without dependencies, every resolved wheel whose project the image lacks.
# A dependency published only as an sdist (antlr4-python3-runtime 4.9.3, which hydra-core and
# omegaconf pin) is built into a wheel here: it is pure Python, so the wheel runs anywhere.
#
# wandb is left out by default: it is the largest wheel by far (~22 MiB with its Go core, plus
# pydantic-core and sentry-sdk), the check runs with WANDB_MODE=disabled (the logger never
# imports wandb then, runs/logger.py), and the carried tree must stay under the device tool's
# 64 MiB with the repository itself (~11 MiB) in it.
set -euo pipefail
cd "$(dirname "$0")/.."

DEST=${1:-.gpu-wheels}
MAX_MIB=${GPU_WHEELS_MAX_MIB:-50}
PYTHON=${PYTHON:-python3}
# This machine's pip.conf adds local mirror folders (and a torch cap) that know nothing of
# Python 3.12; PyPI alone answers for the GPU machine.
export PIP_CONFIG_FILE=/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The target interpreter and platform: every manylinux glibc level up to the image's Ubuntu
# 24.04 (glibc 2.39), because pip matches manylinux_2_N tags exactly.
TARGET=(--python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --only-binary=:all:)
for n in $(seq 17 39); do TARGET+=(--platform "manylinux_2_${n}_x86_64"); done

# A pip new enough for `--dry-run --report` with platform options, kept out of any project venv.
"$PYTHON" -m venv "$work/tool"
PIP=("$work/tool/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -qq --upgrade pip

# What we need: pyproject's dependencies, trl (benchmarks/bench_vs_trl.py), setuptools>=77
# (builds this package with --no-build-isolation; the image's may be older).
"$work/tool/bin/python" - "$work" "${WITH_WANDB:-0}" <<'EOF'
import re
import sys
import tomllib
from pathlib import Path

work, with_wandb = Path(sys.argv[1]), sys.argv[2] == "1"
project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
wanted = [*project["dependencies"], *project["optional-dependencies"]["bench"],
          "setuptools>=77"]
name = lambda req: re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower()
skip = {"psutil", "py-spy"} | (set() if with_wandb else {"wandb"})  # psutil: in the image
(work / "wanted.txt").write_text("\n".join(r for r in wanted if name(r) not in skip) + "\n")
pins = [line for line in Path("scripts/gpu_image.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")]
(work / "constraints.txt").write_text("\n".join(pins) + "\n")
EOF
echo "wanted:"; sed 's/^/  /' "$work/wanted.txt"

# sdist-only dependencies, built here into pure-Python wheels.
mkdir -p "$work/built"
for req in antlr4-python3-runtime==4.9.3; do
  if ! "${PIP[@]}" download -q --no-deps "${TARGET[@]}" -d "$work/built" "$req" 2>/dev/null; then
    echo "building a wheel of $req (no wheel on PyPI)"
    "${PIP[@]}" wheel -q --no-deps -w "$work/built" "$req"
  fi
done

"${PIP[@]}" install -q --dry-run --ignore-installed --report "$work/report.json" "${TARGET[@]}" \
  --find-links "$work/built" -c "$work/constraints.txt" -r "$work/wanted.txt"

# The projects to carry, as name==version lines (and why each, on the console): every resolved
# project reachable from ours through projects the image lacks; an image package's own needs
# are the image's business (the resolver sees its newest release, not the installed one).
# setuptools always: the image's version is unknown and this package's build needs >= 77.
echo "to carry:"
"$work/tool/bin/python" - "$work" > "$work/missing.txt" <<'EOF'
import json
import re
import sys
from pathlib import Path

from pip._vendor.packaging.requirements import Requirement

work = Path(sys.argv[1])
# The GPU machine's interpreter, for environment markers.
TARGET = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
          "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
          "implementation_name": "cpython", "platform_python_implementation": "CPython"}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


lines = Path("scripts/gpu_image.txt").read_text().splitlines()
image = {norm(re.split(r"[=<>]", line)[0]) for line in lines if line and not line.startswith("#")}
always = {"setuptools"}
resolved = {norm(item["metadata"]["name"]): item["metadata"]
            for item in json.loads((work / "report.json").read_text())["install"]}
wanted = [Requirement(line) for line in (work / "wanted.txt").read_text().splitlines() if line]
queue = [(req, "ours") for req in wanted]
why: dict[str, str] = {}
while queue:
    req, parent = queue.pop(0)
    key = norm(req.name)
    if key in why or (key in image and key not in always):
        continue
    why[key] = parent
    meta = resolved[key]
    for line in meta.get("requires_dist", []):
        dep = Requirement(line)
        for extra in ["", *req.extras]:
            if dep.marker is None or dep.marker.evaluate({**TARGET, "extra": extra}):
                queue.append((dep, f"for {meta['name']}"))
                break
for key, parent in why.items():
    pin = f"{resolved[key]['name']}=={resolved[key]['version']}"
    print(pin)
    print(f"  {pin}  ({parent})", file=sys.stderr)
# What the resolver took for the image's own packages: the dry run's stand-in for the image
# (scripts/gpu_stub_image.py), where KINDS.md gives no version.
(work / "image-resolved.txt").write_text("".join(
    f"{meta['name']}=={meta['version']}\n" for key, meta in resolved.items()
    if key in image and key not in why))
EOF

rm -rf "$DEST" && mkdir -p "$DEST"
while read -r req; do
  "${PIP[@]}" download -q --no-deps "${TARGET[@]}" --find-links "$work/built" -d "$DEST" "$req"
done < "$work/missing.txt"
cp "$work/missing.txt" "$DEST/requirements.txt"
cp "$work/image-resolved.txt" "$DEST/image-resolved.txt"

echo "wheels in $DEST, largest first:"
du -k "$DEST"/*.whl | sort -rn | awk '{printf "  %7.2f MiB  %s\n", $1 / 1024, $2}'
total=$(du -sk "$DEST" | cut -f1)
awk -v k="$total" -v max="$MAX_MIB" 'BEGIN { printf "total %.1f MiB (limit %d MiB)\n", k / 1024, max }'
if (( total > MAX_MIB * 1024 )); then
  echo "too large: the device tool carries 64 MiB in all, the repository included" >&2
  exit 1
fi
