#!/usr/bin/env python3
"""Prints the ConfigMaps the Kubernetes manifests in deploy/kubernetes/ mount, made from this
repository's files, as one JSON `List` that `kubectl apply -f -` takes:

    python3 scripts/kubernetes-configmaps.py thinger | kubectl apply -f -

  iotgate-config     iotgate.toml       <- deploy/kubernetes/PROFILE.toml   /etc/iotgate/config/
  iotgate-schema     the profile's .cedarschema and .routes.toml            /etc/iotgate/schema/
  iotgate-policies   the files at the top of policies/PROFILE/              /etc/iotgate/policies/
  iotgate-projects   policies/PROFILE/projects/*.cedar                      /etc/iotgate/projects/
  iotgate-directory  examples/PROFILE/directory/*.json                      /etc/iotgate/directory/

A ConfigMap key allows only letters, digits, `-`, `_` and `.`: a project file's `@` becomes
`_` (`dave@greenhouse.cedar` -> `dave_greenhouse.cedar`); policy ids come from `@id`, not
file names, so decisions do not change. `--root DIR` reads another checkout (tests).
"""
import argparse
import json
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def key(name):
    return re.sub(r"[^-._a-zA-Z0-9]", "_", name)


def config_map(name, files):
    """A ConfigMap of `files`: paths (keyed by their names) or a {key: path} dict."""
    if not isinstance(files, dict):
        named = {}
        for path in files:
            if key(path.name) in named:
                sys.exit(f"kubernetes-configmaps: {path}: key {key(path.name)} is taken")
            named[key(path.name)] = path
        files = named
    data = {k: path.read_text(encoding="utf-8") for k, path in files.items()}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "iotgate"}},
        "data": data,
    }


def files(folder, pattern="*"):
    return sorted(p for p in folder.glob(pattern) if p.is_file() and not p.name.startswith("."))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", choices=["thinger"])
    parser.add_argument("--root", type=pathlib.Path, default=ROOT)
    args = parser.parse_args()
    root, profile = args.root, args.profile
    policies = root / "policies" / profile
    items = [
        config_map("iotgate-config", {"iotgate.toml": root / "deploy" / "kubernetes" / f"{profile}.toml"}),
        config_map("iotgate-schema", files(root / "schema", f"{profile}.*")),
        config_map("iotgate-policies", files(policies)),
        config_map("iotgate-projects", files(policies / "projects", "*.cedar")),
        config_map("iotgate-directory", files(root / "examples" / profile / "directory", "*.json")),
    ]
    json.dump({"apiVersion": "v1", "kind": "List", "items": items}, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
