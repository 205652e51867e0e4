# Switchboard tasks. `just --list` shows them.

# `docker compose` (v2 plugin); `COMPOSE=docker-compose just up` for v1.
compose := env_var_or_default("COMPOSE", "docker compose")

# Run standalone (HTTP :8080, gRPC :50051) with debug logs for switchboard crates.
dev:
    RUST_LOG=info,switchboard=debug cargo run

# Install test tools if missing, then fmt check, clippy and every test.
test *ARGS:
    ./scripts/test.sh {{ARGS}}

# Lints only: Rust, then the deployment files (offline).
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
    ./scripts/check-deploy.sh

# Format the code.
fmt:
    cargo fmt --all

# Optimised build of the one binary.
release:
    cargo build --release

# Side-by-side benchmark against Nchan, Node and FastAPI (docs/BENCHMARKS.md), e.g. `just bench --quick`.
bench *ARGS:
    ./scripts/bench.sh {{ARGS}}

# Distributed demo (Docker): HAProxy :8080, Jaeger :16686, Prometheus :9090, Grafana :3000.
up:
    {{compose}} up --build --detach
    {{compose}} ps

# Stop the demo and remove its containers (keeps the NATS volume; add -v to drop it).
down *ARGS:
    {{compose}} down {{ARGS}}

# Scale the gateways of the running demo, e.g. `just scale 3 2`.
scale ws="3" sse="2":
    {{compose}} up --detach --no-recreate --scale ws-gateway={{ws}} --scale sse-gateway={{sse}}

# Render a Kubernetes overlay (dev or prod) to stdout.
k8s-render overlay="dev":
    kubectl kustomize deploy/k8s/overlays/{{overlay}}

# Offline checks of Dockerfile, compose, HAProxy, NATS, Prometheus, OTel, Grafana, Kubernetes.
check-deploy:
    ./scripts/check-deploy.sh

# The compose topology as local processes behind HAProxy.
smoke:
    cargo test -p switchboard --test deploy_smoke
