#!/usr/bin/env bash
# Installs the JavaScript the UI pages load, by package name from npm, into a gitignored folder:
# ECharts (npm `echarts`, Apache-2.0) draws the charts of the compaction reports. Its code is never
# committed and never loaded from a CDN; the Airflow plugin serves this copy.
# Idempotent: returns at once when the wanted version is already there.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

SPEC="echarts@5"
VENDOR_DIR="plugins/tributary_airflow/ui/static/vendor"
TARGET="$VENDOR_DIR/echarts.min.js"
STAMP="$VENDOR_DIR/echarts.spec"

if [ -s "$TARGET" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$SPEC" ]; then
  exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
  echo "setup: npm is missing; it fetches $SPEC for the compaction report charts." >&2
  echo "setup: install it (Debian/Ubuntu: sudo apt-get install npm), then run scripts/install_js.sh again." >&2
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "setup: fetching $SPEC from npm"
# `npm pack` downloads the published tarball only: no node_modules, no install scripts run.
if ! tarball=$(cd "$work" && npm pack --silent "$SPEC" 2>"$work/npm.log" | tail -n 1) || [ -z "$tarball" ]; then
  echo "setup: 'npm pack $SPEC' failed:" >&2
  cat "$work/npm.log" >&2
  echo "setup: check that the npm registry is reachable (npm config get registry), then run scripts/install_js.sh again." >&2
  exit 1
fi
tar -xzf "$work/$tarball" -C "$work" package/dist/echarts.min.js package/LICENSE package/package.json

mkdir -p "$VENDOR_DIR"
cp "$work/package/LICENSE" "$VENDOR_DIR/echarts.LICENSE"
# Replace the file in one rename, so a page never serves a half-written copy.
cp "$work/package/dist/echarts.min.js" "$TARGET.tmp"
mv "$TARGET.tmp" "$TARGET"
echo "$SPEC" >"$STAMP"
version=$(sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' "$work/package/package.json" | head -n 1)
echo "setup: ECharts $version installed in $TARGET"
