#!/usr/bin/env bash
# Builds this Python task into a component of the taskflow:task world.
# Usage: build.sh OUTPUT.wasm   (needs componentize-py: pip install componentize-py)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
output="$(realpath -m "$1")"
cd "$here"
componentize-py --wit-path ../../wit --world task componentize app --output "$output"
