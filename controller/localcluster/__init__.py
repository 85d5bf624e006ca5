"""Starts and stops a real local control plane (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler) for dev, demo and tests.

This plays the part that envtest plays for Go operators, and more: the real API server with
authentication, RBAC, admission webhooks and CEL validation, and the controllers that garbage-collect owned
objects and finish deleting namespaces. No kubelet (Pods never run): `make e2e` adds a node (tools/node).
"""
