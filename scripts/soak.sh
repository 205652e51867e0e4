#!/usr/bin/env bash
# The soak of issue 9 (not in CI): 30 minutes of churn against a release
# build, then the figures (see crates/switchboard/tests/soak.rs).
#   SOAK_SECONDS (1800), SOAK_CONNECTIONS (5000), SOAK_ROOMS (50)
set -euo pipefail
cd "$(dirname "$0")/.."
export SOAK_SECONDS="${SOAK_SECONDS:-1800}"
cargo test --release -p switchboard --test soak -- --ignored --nocapture 2>&1 | tee "${SOAK_LOG:-/tmp/switchboard-soak.log}"
