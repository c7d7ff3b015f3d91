#!/usr/bin/env bash
# Processors (issue 4): the external tools the processors use or are compared with in tests.
#   yui-compressor, closure-compiler: yui_compressor.YUICompressor, google_closure_compiler.*
#   libjpeg-turbo-progs (jpegtran): JPEG fallback and baseline candidate for small JPEGs
#   gifsicle: animated GIF optimisation
#   optipng, pngcrush: only the benchmark's comparison with the original's tools
# The Python packages (Pillow, pyoxipng, mozjpeg-lossless-optimization, rcssmin, rjsmin) come from
# requirements/processors.txt.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
need_debs yui-compressor closure-compiler libjpeg-turbo-progs gifsicle optipng pngcrush
