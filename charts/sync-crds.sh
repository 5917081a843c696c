#!/bin/sh
# Copy the generated CRDs (crds/, written by `exegpt crd`) into the chart, which must
# ship them byte for byte (tests/chart/test_crds.py fails while they differ).
#
#   charts/sync-crds.sh
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
rm -f "$root"/charts/exegpt/crds/*.yaml
cp "$root"/crds/*.yaml "$root"/charts/exegpt/crds/
echo "synced: $(cd "$root" && ls charts/exegpt/crds/*.yaml | tr '\n' ' ')"
