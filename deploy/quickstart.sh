#!/usr/bin/env bash
# Install, prepare the offline SmolLM2 model (once) and start carecycle on the embedded defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install.sh
.venv/bin/carecycle model prepare
# the default live judge; trained once (minutes of CPU), kept under data/judges/
.venv/bin/carecycle judge train --if-missing
exec .venv/bin/carecycle serve "$@"
