"""A small kustomize renderer for k8s/ (no kustomize binary needed offline).

Supports what k8s/ uses: resources (files and directories), namespace,
images, configMapGenerator (create/merge, files and literals, kustomize's
content-hash name suffix and the references to it), JSON 6902 patches
with a target and `$patch: delete` patches (remove the target). Anything else in a kustomization.yaml is an error, so a
feature added to k8s/ cannot be silently ignored here.

    /usr/bin/python3 test/deploy/kustomize.py k8s/overlays/prod   # YAML on stdout
"""
import copy
import hashlib
import json
import os
import sys

import yaml

KNOWN_KEYS = {"apiVersion", "kind", "resources", "namespace", "images",
              "configMapGenerator", "patches"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "ClusterIssuer",
                  "CustomResourceDefinition", "PriorityClass", "StorageClass"}
GEN = "__generated_name"


class KustomizeError(Exception):
    pass


def _load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def _within(root, path):
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if os.path.commonpath([real_root, real]) != real_root:
        raise KustomizeError("%s: file is not in or below %s (kustomize's load restriction)" % (path, root))


def _kv_files(root, files):
    data = {}
    for spec in files or []:
        key, _, rel = spec.partition("=") if "=" in spec else (os.path.basename(spec), "", spec)
        path = os.path.join(root, rel)
        _within(root, path)
        with open(path) as f:
            data[key] = f.read()
    return data


def _kv_literals(literals):
    data = {}
    for lit in literals or []:
        k, sep, v = lit.partition("=")
        if not sep:
            raise KustomizeError("literal %r has no =" % lit)
        data[k] = v
    return data


def config_map_hash(cm):
    """kustomize's ConfigMap name suffix (api/hasher): sha256 of the Go JSON
    encoding of {data, kind, name: ""}, first 10 hex digits, some letters swapped."""
    # kustomize (v5) hashes an empty name here, not the generator name.
    m = {"kind": "ConfigMap", "name": "", "data": cm.get("data", {})}
    enc = json.dumps(m, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    enc = enc.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    enc = enc.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    hx = hashlib.sha256(enc.encode()).hexdigest()[:10]
    return hx.translate(str.maketrans("013ae", "ghkmt"))


def _json_pointer(doc, path):
    parts = [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]
    if not path.startswith("/"):
        raise KustomizeError("bad JSON pointer %r" % path)
    parent = doc
    for p in parts[:-1]:
        parent = parent[int(p)] if isinstance(parent, list) else parent[p]
    return parent, parts[-1]


def apply_json6902(obj, ops):
    for op in ops:
        kind = op["op"]
        parent, key = _json_pointer(obj, op["path"])
        if isinstance(parent, list):
            if key == "-" and kind == "add":
                parent.append(copy.deepcopy(op["value"]))
                continue
            idx = int(key)
            if kind == "add":
                parent.insert(idx, copy.deepcopy(op["value"]))
            elif kind == "replace":
                parent[idx]  # noqa: B018 - must exist
                parent[idx] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del parent[idx]
            else:
                raise KustomizeError("unsupported op %s" % kind)
        else:
            if kind == "add":
                parent[key] = copy.deepcopy(op["value"])
            elif kind == "replace":
                if key not in parent:
                    raise KustomizeError("replace %s: no such path" % op["path"])
                parent[key] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del parent[key]
            else:
                raise KustomizeError("unsupported op %s" % kind)


def _matches(obj, target):
    for field, val in target.items():
        if field == "kind" and obj.get("kind") != val:
            return False
        if field == "name" and obj["metadata"].get(GEN, obj["metadata"]["name"]) != val:
            return False
        if field == "namespace" and obj["metadata"].get("namespace") != val:
            return False
        if field not in ("kind", "name", "namespace"):
            raise KustomizeError("patch target field %s not supported" % field)
    return True


def _pod_specs(obj):
    spec = obj.get("spec", {})
    if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        yield spec["template"]["spec"]
    elif obj["kind"] == "CronJob":
        yield spec["jobTemplate"]["spec"]["template"]["spec"]
    elif obj["kind"] == "Pod":
        yield spec


def _build(root):
    kpath = os.path.join(root, "kustomization.yaml")
    with open(kpath) as f:
        k = yaml.safe_load(f)
    unknown = set(k) - KNOWN_KEYS
    if unknown:
        raise KustomizeError("%s: unsupported fields %s" % (kpath, sorted(unknown)))
    objs = []
    for res in k.get("resources", []):
        path = os.path.join(root, res)
        if os.path.isdir(path):
            objs.extend(_build(path))
        else:
            _within(root, path)
            objs.extend(_load_docs(path))
    for gen in k.get("configMapGenerator", []):
        data = _kv_files(root, gen.get("files"))
        data.update(_kv_literals(gen.get("literals")))
        unknown = set(gen) - {"name", "files", "literals", "behavior"}
        if unknown:
            raise KustomizeError("configMapGenerator %s: unsupported %s" % (gen["name"], sorted(unknown)))
        behavior = gen.get("behavior", "create")
        existing = [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"].get(GEN) == gen["name"]]
        if behavior == "create":
            if existing:
                raise KustomizeError("ConfigMap %s generated twice" % gen["name"])
            objs.append({"apiVersion": "v1", "kind": "ConfigMap",
                         "metadata": {"name": gen["name"], GEN: gen["name"]}, "data": data})
        elif behavior in ("merge", "replace"):
            if len(existing) != 1:
                raise KustomizeError("ConfigMap %s: nothing to %s" % (gen["name"], behavior))
            if behavior == "merge":
                existing[0].setdefault("data", {}).update(data)
            else:
                existing[0]["data"] = data
        else:
            raise KustomizeError("behavior %s" % behavior)
    ns = k.get("namespace")
    if ns:
        for o in objs:
            if o["kind"] not in CLUSTER_SCOPED:
                o["metadata"]["namespace"] = ns
    for img in k.get("images", []):
        for o in objs:
            for ps in _pod_specs(o):
                for c in ps.get("containers", []) + ps.get("initContainers", []):
                    name = c["image"].split("@")[0]
                    if ":" in name.rsplit("/", 1)[-1]:
                        name = name.rsplit(":", 1)[0]
                    if name == img["name"]:
                        c["image"] = "%s:%s" % (img.get("newName", name), img["newTag"])
    for p in k.get("patches", []):
        ops = yaml.safe_load(p["patch"]) if "patch" in p else None
        hits = [o for o in objs if _matches(o, p["target"])]
        if not hits:
            raise KustomizeError("patch target %s matches nothing" % p["target"])
        if isinstance(ops, dict) and ops.get("$patch") == "delete":
            # The one strategic-merge patch supported: delete the target.
            objs = [o for o in objs if not any(o is h for h in hits)]
            continue
        if not isinstance(ops, list):
            raise KustomizeError("only JSON 6902 patches (a list of ops) and $patch: delete are supported")
        for o in hits:
            apply_json6902(o, ops)
    return objs


def _rename_refs(objs, renames):
    for o in objs:
        for ps in _pod_specs(o):
            for v in ps.get("volumes", []):
                if "configMap" in v and v["configMap"]["name"] in renames:
                    v["configMap"]["name"] = renames[v["configMap"]["name"]]
            for c in ps.get("containers", []) + ps.get("initContainers", []):
                for e in c.get("env", []):
                    ref = e.get("valueFrom", {}).get("configMapKeyRef")
                    if ref and ref["name"] in renames:
                        ref["name"] = renames[ref["name"]]
                for e in c.get("envFrom", []):
                    ref = e.get("configMapRef")
                    if ref and ref["name"] in renames:
                        ref["name"] = renames[ref["name"]]


def build(root):
    """Render the kustomization in directory root: a list of objects."""
    objs = _build(root)
    renames = {}
    for o in objs:
        md = o["metadata"]
        if GEN in md:
            md["name"] = "%s-%s" % (md[GEN], config_map_hash(o))
            renames[md[GEN]] = md["name"]
    for o in objs:
        o["metadata"].pop(GEN, None)
    _rename_refs(objs, renames)
    return objs


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: kustomize.py DIR")
    yaml.safe_dump_all(build(sys.argv[1]), sys.stdout, sort_keys=False)
