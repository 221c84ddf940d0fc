"""Shipped policy presets (`preset: NAME` loads `NAME.yaml`) and the policy file's JSON Schema."""
