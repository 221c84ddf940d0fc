"""The policy: what the operator allows, and the decisions it makes with no storage. No MCP SDK here.

model.py       what a policy file may say (pydantic models, field types, bounds, the JSON Schema)
files.py       reading a file (YAML or JSON) with positions, presets, located errors, dumping it back
seeds.py       Intercept and PolicyLayer files, translated to guard's policy
rules.py       `Policy`: refusals (tool names and their variants), conditions, approvals, caps, budgets,
               rate-limit keys; `Denial`, `Who`
arguments.py   a call's arguments: paths, conditions' tests, numbers read from arguments
source.py      the running policy and its hot reload
"""
