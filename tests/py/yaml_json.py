"""Prints the YAML documents of a file as a JSON list, for the tests.

usage: yaml_json.py <file.yaml>
"""
import json
import sys

import yaml

with open(sys.argv[1]) as f:
    json.dump([d for d in yaml.safe_load_all(f) if d is not None], sys.stdout)
