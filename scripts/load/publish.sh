#!/usr/bin/env bash
# Publishes one scripts/loadtest.sh run into a directory that is committed (default docs/loadtest,
# which the README links): the run's raw records and meta, its pictures and its Markdown report,
# all named latest.*, so the README's links stay the same from one run to the next.
#
# Usage: scripts/load/publish.sh RESULTS [DIR]
#   RESULTS  a run's results-<date> prefix, or any of its files (results-<date>.md, .raw.tsv, .meta)
#   DIR      where to write latest.{md,rps.png,latency.png,figures.tsv,raw.tsv,meta} [docs/loadtest]
# scripts/loadtest.sh --publish DIR runs this at the end of a run. Needs matplotlib (exit 3 and
# nothing written without it: apt-get install python3-matplotlib).
set -euo pipefail

LOAD=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src=${1:?usage: scripts/load/publish.sh RESULTS [DIR]}
dir=${2:-$(cd "$LOAD/../.." && pwd)/docs/loadtest}
for ext in .md .raw.tsv .meta; do src=${src%"$ext"}; done
if [ ! -f "$src.raw.tsv" ] || [ ! -f "$src.meta" ]; then
  echo "publish: $src.raw.tsv and $src.meta are needed (written by scripts/loadtest.sh)" >&2
  exit 1
fi
mkdir -p "$dir"
# The pictures first: without matplotlib (exit 3) or with unusable records nothing is replaced.
python3 "$LOAD/plot.py" --raw "$src.raw.tsv" --meta "$src.meta" --out-prefix "$dir/latest"
python3 "$LOAD/report.py" --raw "$src.raw.tsv" --meta "$src.meta" \
  --charts latest.rps.png latest.latency.png >"$dir/latest.md"
cp "$src.raw.tsv" "$dir/latest.raw.tsv"
cp "$src.meta" "$dir/latest.meta"
echo "publish: wrote $dir/latest.{md,rps.png,latency.png,figures.tsv,raw.tsv,meta} from $src.*; commit them" >&2
