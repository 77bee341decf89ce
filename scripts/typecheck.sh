#!/usr/bin/env bash
# mypy over the three layers under the names they install as (musicgen_live.engine, .streamer,
# .bridges): a throwaway folder of links lays them out as the wheel does, so imports between the
# layers are followed and checked (the editable install's import hook is invisible to mypy).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/musicgen_live"
for layer in engine streamer bridges; do ln -s "$PWD/$layer" "$root/musicgen_live/$layer"; done
MYPYPATH="$root" .venv/bin/mypy -p musicgen_live.engine -p musicgen_live.streamer -p musicgen_live.bridges
