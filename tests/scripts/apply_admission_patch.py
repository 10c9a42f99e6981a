#!/usr/bin/env python3
"""Applies an AdmissionReview response's JSONPatch to the Pod of its request with the
independent `jsonpatch` library (PyPI), as the Kubernetes API server would.

Usage: apply_admission_patch.py REQUEST.json RESPONSE.json OUT.json
Exit 0 and OUT.json holds the patched Pod; exit 2 when the response carries no patch.
"""
import base64
import json
import sys

import jsonpatch

request_path, response_path, out_path = sys.argv[1:4]
with open(request_path) as f:
    pod = json.load(f)["request"]["object"]
with open(response_path) as f:
    review = json.load(f)
response = review["response"]
assert review["apiVersion"] == "admission.k8s.io/v1", review
assert review["kind"] == "AdmissionReview", review
assert response["allowed"] is True, response
if "patch" not in response:
    sys.exit(2)
assert response["patchType"] == "JSONPatch", response
patch = json.loads(base64.b64decode(response["patch"]))
patched = jsonpatch.JsonPatch(patch).apply(pod)
with open(out_path, "w") as f:
    json.dump(patched, f)
