"""Deployment: Kubernetes manifests (k8s/) and the pure-Python kustomize renderer the tests use."""
