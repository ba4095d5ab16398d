"""Deployment artifacts validated offline (issue 7): compose/, k8s/, deploy/,
the systemd unit, against the real tools and the running service.

Tools (installed by `make deps`): docker-compose, yamllint, promtool,
systemd-analyze, node + `npm ci --prefix test/deploy` (Kubernetes,
cert-manager and prometheus-operator schemas from kubernetes-models). A
missing tool fails the test that needs it, naming how to get it.
"""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from harness import util
from harness.service import REPO

DEPLOY = os.path.join(REPO, "test", "deploy")
sys.path.insert(0, DEPLOY)
import kustomize  # noqa: E402

COMPOSE_FILES = ["compose/docker-compose.yml", "compose/docker-compose-local.yml"]
OVERLAYS = ["k8s/base", "k8s/overlays/prod"]
DASHBOARD = os.path.join(REPO, "deploy", "grafana", "exchange-service.json")
ALERTS = os.path.join(REPO, "deploy", "prometheus", "alerts.yml")


def tool(name, package):
    path = shutil.which(name)
    if path is None:
        pytest.fail("%s not found: install the Debian package %s (make deps)" % (name, package))
    return path


def run(argv, **kw):
    kw.setdefault("timeout", 60)
    return subprocess.run(argv, cwd=kw.pop("cwd", REPO), capture_output=True, text=True, **kw)


def yaml_files():
    out = []
    for top in ("compose", "k8s", "deploy"):
        for d, _, files in os.walk(os.path.join(REPO, top)):
            out += [os.path.relpath(os.path.join(d, f), REPO) for f in files if f.endswith((".yml", ".yaml"))]
    return sorted(out)


@pytest.fixture(scope="module")
def rendered():
    return {o: kustomize.build(os.path.join(REPO, o)) for o in OVERLAYS}


def find(objs, kind, name=None):
    hits = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(hits) == 1, "expected one %s %s, found %d" % (kind, name or "", len(hits))
    return hits[0]


# ---- YAML and compose -----------------------------------------------------------

def test_yamllint_all_yaml():
    tool("yamllint", "yamllint")
    files = yaml_files()
    assert len(files) >= 15, files
    r = run(["yamllint", "--strict", "-c", os.path.join(DEPLOY, "yamllint.yml")] + files)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("path", COMPOSE_FILES)
def test_compose_config(path):
    tool("docker-compose", "docker-compose")
    r = run(["docker-compose", "-f", path, "config"])
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load(r.stdout)
    svcs = cfg["services"]
    for name in ("zookeeper", "kafka", "kafka-ui"):
        assert name in svcs, name
    assert "healthcheck" in svcs["zookeeper"] and "healthcheck" in svcs["kafka"]
    if path.endswith("docker-compose-local.yml"):
        ports = {p["published"] if isinstance(p, dict) else p for p in svcs["kafka"]["ports"]}
        assert any("9092" in str(p) for p in ports), ports
        return
    for name in ("backend1", "backend2", "sim", "prometheus", "grafana"):
        assert name in svcs, name
    for b, host_port in (("backend1", 8080), ("backend2", 8081)):
        s = svcs[b]
        env = s["environment"]
        assert env["EXCHANGE_PROFILE"] == "docker" and env["LOG_LEVEL"] == "DEBUG"
        assert env["EXCHANGE_SERVICE_INSTANCE"] == b
        assert env["EXCHANGE_RELAY_ADVERTISE"] == "%s:8091" % b
        assert s["build"]["dockerfile"].endswith("Dockerfile")
        assert os.path.samefile(s["build"]["context"], REPO)
        assert any(str(p.get("published")) == str(host_port) and int(p["target"]) == 8080
                   for p in s["ports"]), s["ports"]
        for dep in ("zookeeper", "kafka"):
            assert s["depends_on"][dep]["condition"] == "service_healthy", (b, dep)
        assert "healthcheck" in s
    sim = svcs["sim"]
    assert "0.0.0.0" in " ".join(sim.get("entrypoint") or []) or "0.0.0.0" in open(
        os.path.join(REPO, "compose", "sim", "Dockerfile")).read()
    # Everything the compose file mounts exists.
    for name in ("prometheus", "grafana"):
        for v in svcs[name]["volumes"]:
            src = v["source"] if isinstance(v, dict) else v.split(":")[0]
            assert os.path.exists(src), src


def _compose_backend_env(name):
    r = run(["docker-compose", "-f", "compose/docker-compose.yml", "config"])
    assert r.returncode == 0, r.stderr
    return yaml.safe_load(r.stdout)["services"][name]["environment"]


def check_config(build_dir, conf_dir, args, env):
    """Run exchange-service --check-config with exactly env (no inherited EXCHANGE_*)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("EXCHANGE_") and k != "LOG_LEVEL"}
    base.update(env)
    argv = [os.path.join(build_dir, "exchange-service")] + args + ["--check-config"]
    if "--conf-dir" not in args:
        argv += ["--conf-dir", conf_dir]
    r = run(argv, env=base, timeout=20)
    assert r.returncode == 0, "%s\nrc=%s\n%s%s" % (" ".join(argv), r.returncode, r.stdout, r.stderr)
    return r.stdout + r.stderr


@pytest.mark.parametrize("backend", ["backend1", "backend2"])
def test_compose_backend_config_is_valid(build_dir, backend):
    """The docker profile plus the compose environment pass --check-config."""
    tool("docker-compose", "docker-compose")
    env = {k: str(v) for k, v in _compose_backend_env(backend).items()}
    out = check_config(build_dir, os.path.join(REPO, "conf"), [], env)
    assert backend in out and "%s:8091" % backend in out, out


# ---- Kubernetes -----------------------------------------------------------------

def test_k8s_copies_in_sync():
    hint = "run test/deploy/sync-conf.sh"
    with open(os.path.join(REPO, "conf", "prod.ini")) as a, open(os.path.join(REPO, "k8s", "base", "prod.ini")) as b:
        assert a.read() == b.read(), "k8s/base/prod.ini differs from conf/prod.ini: " + hint
    with open(ALERTS) as f:
        groups = yaml.safe_load(f)["groups"]
    with open(os.path.join(REPO, "k8s", "base", "prometheusrule.yaml")) as f:
        rule = yaml.safe_load(f)
    assert rule["spec"]["groups"] == groups, "k8s/base/prometheusrule.yaml differs from alerts.yml: " + hint


def test_kustomize_render_matches_kubectl(rendered):
    """Our renderer against the real kustomize, where kubectl is installed
    (it is not a Debian package: the schema checks below do not need it)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: cross-check of test/deploy/kustomize.py skipped")
    for ov, objs in rendered.items():
        r = run([kubectl, "kustomize", ov])
        assert r.returncode == 0, r.stderr
        theirs = {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(r.stdout)}
        ours = {(o["kind"], o["metadata"]["name"]): o for o in objs}
        assert ours == theirs, ov


def test_k8s_objects_match_schemas(rendered):
    node = tool("node", "nodejs")
    if not os.path.isdir(os.path.join(DEPLOY, "node_modules", "kubernetes-models")):
        pytest.fail("test/deploy/node_modules missing: run `npm ci --prefix test/deploy` (make deps)")
    objs = [o for ov in OVERLAYS for o in rendered[ov]]
    r = run([node, os.path.join(DEPLOY, "validate-k8s.mjs")], input=json.dumps(objs))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "%d valid, 0 invalid" % len(objs) in r.stdout, r.stdout


def test_k8s_deployment_contract(rendered):
    objs = rendered["k8s/overlays/prod"]
    kinds = sorted(o["kind"] for o in objs)
    for k in ("ConfigMap", "Deployment", "Service", "Ingress", "Certificate", "Issuer",
              "PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy", "ServiceAccount",
              "ServiceMonitor", "PrometheusRule", "Namespace"):
        assert k in kinds, k
    assert all(o["metadata"].get("namespace") == "exchange" for o in objs if o["kind"] != "Namespace")
    d = find(objs, "Deployment")
    spec = d["spec"]
    assert spec["replicas"] == 3
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = spec["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["affinity"]["podAntiAffinity"]
    (c,) = pod["containers"]
    assert c["image"] == "registry.example.com/exchange-service:1.0.0"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["resources"]["requests"] and c["resources"]["limits"]
    prestop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert prestop[0].endswith("sleep")
    drain_s = 10  # [fanout] drain_ms default
    assert pod["terminationGracePeriodSeconds"] >= int(prestop[1]) + drain_s + 10
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["EXCHANGE_SERVICE_INSTANCE"]["value"] == "$(POD_NAME)"
    assert env["EXCHANGE_RELAY_ADVERTISE"]["value"] == "$(POD_IP):8091"
    assert env["EXCHANGE_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
    cm = find(objs, "ConfigMap")
    vol = [v for v in pod["volumes"] if "configMap" in v][0]
    assert vol["configMap"]["name"] == cm["metadata"]["name"]
    assert find(objs, "ServiceAccount")["automountServiceAccountToken"] is False
    assert not [o for o in objs if o["kind"] in ("Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")]
    svc = find(objs, "Service", "exchange-service")
    assert [(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [(80, "http")]
    headless = find(objs, "Service", "exchange-service-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert 8091 in [p["port"] for p in headless["spec"]["ports"]]
    ing = find(objs, "Ingress")
    ann = ing["metadata"]["annotations"]
    assert ann["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "3600"
    assert ann["nginx.ingress.kubernetes.io/proxy-send-timeout"] == "3600"
    assert ing["spec"]["ingressClassName"] == "nginx"
    cert = find(objs, "Certificate")
    assert ing["spec"]["tls"][0]["secretName"] == cert["spec"]["secretName"]
    assert ing["spec"]["tls"][0]["hosts"] == cert["spec"]["dnsNames"]
    assert cert["spec"]["issuerRef"]["name"] == find(objs, "Issuer")["metadata"]["name"]
    np_ = find(objs, "NetworkPolicy")["spec"]
    ports_in = sorted(p["port"] for rule in np_["ingress"] for p in rule["ports"])
    assert ports_in == [8080, 8090, 8091]
    egress_ports = sorted({p["port"] for rule in np_["egress"] for p in rule["ports"]})
    assert egress_ports == [53, 443, 2181, 8091, 9096, 9443], egress_ports
    assert find(objs, "HorizontalPodAutoscaler")["spec"]["minReplicas"] == 3
    sm = find(objs, "ServiceMonitor")["spec"]
    assert sm["endpoints"][0]["port"] == "metrics"
    assert sm["selector"]["matchLabels"].items() <= headless["metadata"]["labels"].items()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_configmap_and_env_pass_check_config(build_dir, rendered, overlay, tmp_path):
    """The ConfigMap, the container args and env (downward API values and
    Secrets filled in) make a configuration the service accepts."""
    objs = rendered[overlay]
    cm = find(objs, "ConfigMap")
    c = find(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    conf = tmp_path / "etc"
    conf.mkdir()
    for k, v in cm["data"].items():
        (conf / k).write_text(v)
    args = [a.replace("/etc/exchange-service", str(conf)) for a in c["args"]]
    env = {"POD_NAME": "exchange-service-7d9f8-abcde", "POD_IP": "10.1.2.3"}
    for e in c["env"]:
        if "value" in e:
            env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], e["value"])
        elif "secretKeyRef" in e["valueFrom"]:
            env[e["name"]] = "secret-from-" + e["valueFrom"]["secretKeyRef"]["key"]
    out = check_config(build_dir, str(conf), args, env)
    assert "exchange-service-7d9f8-abcde" in out and "10.1.2.3:8091" in out, out


# ---- Prometheus, Grafana, systemd ------------------------------------------------

def test_promtool_rules():
    tool("promtool", "prometheus")
    r = run(["promtool", "check", "rules", ALERTS])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout + r.stderr


def test_promtool_config(tmp_path):
    """compose/prometheus.yml with its rule file at the path compose mounts."""
    tool("promtool", "prometheus")
    with open(os.path.join(REPO, "compose", "prometheus.yml")) as f:
        cfg = yaml.safe_load(f)
    assert cfg["rule_files"] == ["/etc/prometheus/alerts.yml"]
    targets = [t for sc in cfg["scrape_configs"] for g in sc["static_configs"] for t in g["targets"]]
    assert sorted(targets) == ["backend1:8090", "backend2:8090"]
    cfg["rule_files"] = [ALERTS]
    p = tmp_path / "prometheus.yml"
    p.write_text(yaml.safe_dump(cfg))
    r = run(["promtool", "check", "config", str(p)])
    assert r.returncode == 0, r.stdout + r.stderr


def test_systemd_unit_verifies(build_dir, tmp_path):
    sa = tool("systemd-analyze", "systemd")
    prefix = tmp_path / "prefix"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "etc" / "exchange-service").mkdir(parents=True)
    for b in ("exchange-service", "exchange-ingest", "exchange-fanout"):
        os.symlink(os.path.join(build_dir, b), prefix / "bin" / b)
    with open(os.path.join(REPO, "conf", "exchange-service.service")) as f:
        unit = f.read().replace("@PREFIX@", str(prefix))
    path = tmp_path / "exchange-service.service"
    path.write_text(unit)
    r = run([sa, "verify", "--man=no", str(path)], env=dict(os.environ, SYSTEMD_LOG_LEVEL="notice"))
    # Only messages about this unit count: the host's own units are not ours.
    ours = [ln for ln in (r.stdout + r.stderr).splitlines() if "exchange-service" in ln]
    assert r.returncode == 0 and not ours, r.stdout + r.stderr


# ---- metric names used by the dashboard and the alerts exist ----------------------

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
                "unless", "bool", "offset", "inf", "nan", "le"}


def promql_metric_names(expr):
    """Metric names referenced by a PromQL expression (a small tokenizer:
    strings, label matchers, grouping clauses and ranges removed; every
    remaining identifier not followed by '(' is a metric)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"\$\{?\w+\}?", " ", e)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        word = m.group(0)
        rest = e[m.end():].lstrip()
        if rest.startswith("(") or word.lower() in PROMQL_WORDS:
            continue
        if m.start() > 0 and (e[m.start() - 1].isdigit() or e[m.start() - 1] == "."):
            continue  # 1e3, 0.99 and durations like 5m
        names.add(word)
    return names


def test_promql_tokenizer():
    assert promql_metric_names('histogram_quantile(0.99, sum by (le) (rate(a_bucket{x="y"}[5m])))') == {"a_bucket"}
    assert promql_metric_names("(sum(b) or vector(0)) < 1 and on (instance) (c == 1)") == {"b", "c"}
    assert promql_metric_names('max by (exchange) (d{instance=~"$instance"}) > 60') == {"d"}


def dashboard_exprs():
    with open(DASHBOARD) as f:
        dash = json.load(f)
    exprs = []
    for p in dash["panels"]:
        for t in p.get("targets", []):
            exprs.append(("panel %r" % p["title"], t["expr"]))
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            m = re.fullmatch(r"label_values\((.*),\s*\w+\)", v["definition"])
            assert m, "variable %s: expected label_values(SELECTOR, LABEL)" % v["name"]
            exprs.append(("variable %s" % v["name"], m.group(1)))
    return dash, exprs


def alert_exprs():
    with open(ALERTS) as f:
        return [("alert %s" % r["alert"], r["expr"]) for g in yaml.safe_load(f)["groups"] for r in g["rules"]]


def test_grafana_dashboard_shape():
    dash, exprs = dashboard_exprs()
    assert dash["uid"] and dash["title"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    titles = " | ".join(p["title"] for p in dash["panels"]).lower()
    for want in ("leader", "epoch", "transitions", "connected", "last message age", "reconnects",
                 "messages/s in", "source", "clients", "messages/s out", "latency",
                 "slow-client", "restarts"):
        assert want in titles, want
    for what, e in exprs:
        assert promql_metric_names(e), "%s: no metric in %r" % (what, e)


def exposed_metric_names(text):
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            fam, typ = line.split()[2:4]
            names.add(fam)
            if typ == "histogram":
                names |= {fam + "_bucket", fam + "_sum", fam + "_count"}
            elif typ == "summary":
                names |= {fam + "_sum", fam + "_count"}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, 1)[0])
    return names


def test_dashboard_and_alert_metrics_exist(service_factory, kafka_broker):
    """Every metric a panel or alert uses is in the /metrics output of a real
    instance running a fanout worker (on Kafka) and the ingest worker (with
    every exchange enabled; nothing listens at their URLs here)."""
    dead = util.free_port()
    exchanges = {"exchange." + ex: {"enabled": True, "url": "ws://127.0.0.1:%d%s" % (dead, path)}
                 for ex, path in (("upbit", "/websocket/v1"), ("bithumb", "/websocket/v1"),
                                  ("binance", "/stream"), ("coinbase", "/"))}
    overrides = dict(exchanges, kafka={"brokers": kafka_broker.bootstrap, "topic": kafka_broker.topic})
    svc = service_factory(overrides=overrides)
    want = {}
    for what, e in dashboard_exprs()[1] + alert_exprs():
        for n in promql_metric_names(e):
            want.setdefault(n, []).append(what)

    def all_present():
        have = exposed_metric_names(svc.metrics())
        missing = {n: w for n, w in want.items() if n not in have}
        return (not missing, missing, have)

    try:
        util.wait_until(lambda: all_present()[0], timeout=15, what="every used metric on /metrics")
    except AssertionError:
        _, missing, have = all_present()
        lines = ["%s (used by %s)" % (n, ", ".join(sorted(set(w)))) for n, w in sorted(missing.items())]
        pytest.fail("metrics used by deploy/ but not exported by the service:\n  " + "\n  ".join(lines)
                    + "\nexported: " + " ".join(sorted(have)))
