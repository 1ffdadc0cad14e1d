"""Validates admin API responses against docs/admin-openapi.json with jsonschema,
independently of the server's code. Reads JSON lines on stdin, one response each:
{"path": "/api/v1/upstreams/{upstream}/endpoints/{endpoint}/state", "method": "post",
 "status": 200, "body": {...}}. Prints one line per problem; exits 1 if there was any.
Usage: openapi_check.py OPENAPI.json"""

import json
import sys

import jsonschema

doc = json.load(open(sys.argv[1]))
problems = 0
for line in sys.stdin:
    if not line.strip():
        continue
    case = json.loads(line)
    op = doc["paths"].get(case["path"], {}).get(case["method"])
    if op is None:
        print(f"{case['method'].upper()} {case['path']}: not in the OpenAPI document")
        problems += 1
        continue
    response = op["responses"].get(str(case["status"]))
    if response is None:
        print(f"{case['method'].upper()} {case['path']}: status {case['status']} not documented")
        problems += 1
        continue
    schema = dict(response["content"]["application/json"]["schema"])
    schema["components"] = doc["components"]
    try:
        jsonschema.validate(case["body"], schema, cls=jsonschema.Draft7Validator)
    except jsonschema.ValidationError as e:
        print(f"{case['method'].upper()} {case['path']} {case['status']}: {e.message} at {list(e.absolute_path)}")
        problems += 1
sys.exit(1 if problems else 0)
