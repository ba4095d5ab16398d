// Validate Kubernetes objects against the schemas shipped by the npm packages
// kubernetes-models (core API), @kubernetes-models/cert-manager,
// @kubernetes-models/prometheus-operator and @kubernetes-models/gateway-api
// (CRDs). Offline.
//   node test/deploy/validate-k8s.mjs < objects.json   (a JSON array)
// Prints one line per object; exits 1 if any object is invalid or of a kind
// with no schema here.
import { readFileSync } from "node:fs";

const CORE_GROUPS = new Set(["v1", "apps", "batch", "policy", "autoscaling", "networking.k8s.io",
  "rbac.authorization.k8s.io", "storage.k8s.io", "scheduling.k8s.io", "coordination.k8s.io"]);
const CRD_PACKAGES = {
  "cert-manager.io": "@kubernetes-models/cert-manager",
  "monitoring.coreos.com": "@kubernetes-models/prometheus-operator",
  "gateway.networking.k8s.io": "@kubernetes-models/gateway-api",
};

function modulePath(apiVersion, kind) {
  const group = apiVersion.includes("/") ? apiVersion.split("/")[0] : "v1";
  if (CORE_GROUPS.has(group)) return `kubernetes-models/${apiVersion}/${kind}`;
  if (CRD_PACKAGES[group]) return `${CRD_PACKAGES[group]}/${apiVersion}/${kind}`;
  return null;
}

const objects = JSON.parse(readFileSync(0, "utf8"));
let bad = 0;
for (const obj of objects) {
  const id = `${obj.apiVersion} ${obj.kind} ${obj.metadata && obj.metadata.name}`;
  const path = modulePath(obj.apiVersion, obj.kind);
  let Model;
  try {
    Model = path && (await import(path))[obj.kind];
  } catch (e) {
    Model = null;
  }
  if (!Model) {
    console.log(`FAIL ${id}: no schema for this apiVersion/kind (${path || "unknown group"})`);
    bad++;
    continue;
  }
  try {
    new Model(obj).validate();
    console.log(`ok   ${id}`);
  } catch (e) {
    const errs = (e.errors || []).map((x) => `${x.instancePath || "/"} ${x.message}`).join("; ");
    console.log(`FAIL ${id}: ${errs || e.message}`);
    bad++;
  }
}
console.log(`${objects.length - bad} valid, ${bad} invalid`);
process.exit(bad ? 1 : 0);
