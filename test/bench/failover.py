"""Scenarios 5 and 6 (placeholder while written)."""


def run(build, logs, quick, reps, only):
    return {"failover": "n/a (not implemented yet)", "switch": "n/a (not implemented yet)"}
