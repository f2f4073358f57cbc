"""Kubernetes operator for EvoQualityRun: runs each stage command as a Job, reads the summaries.

Modules: `reconcile` (pure state machine), `jobs` (manifests, reading Jobs), `naming` (child
names and labels), `k8s` (API calls), `controller` (applies reconcile), `handlers` (kopf wiring),
`__main__` (the `evoquality-operator` command).
"""
