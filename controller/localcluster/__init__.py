"""Starts and stops a real local control plane (etcd + kube-apiserver) for dev, demo and tests.

This plays the part that envtest plays for Go operators: no kubelet and no controllers, but the real API
server with authentication, RBAC, admission webhooks and CEL validation.
"""
