#!/usr/bin/env bash
# Installs what bench/bench_processors.py needs (not run by CI): the Debian tools the original used
# (jpegtran, pngcrush, optipng, gifsicle) and YUI Compressor, the processors' Python packages, and
# cssutils for the comparison with the original's CSS parse.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps/40-processors.sh
python3 -m pip install -q -r requirements/processors.txt cssutils
