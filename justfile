# Switchboard tasks. `just --list` shows them.

# Run standalone (HTTP :8080, gRPC :50051) with debug logs for switchboard crates.
dev:
    RUST_LOG=info,switchboard=debug cargo run

# Install test tools if missing, then fmt check, clippy and every test.
test *ARGS:
    ./scripts/test.sh {{ARGS}}

# Lints only.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Format the code.
fmt:
    cargo fmt --all

# Optimised build of the one binary.
release:
    cargo build --release
