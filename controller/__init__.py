"""AI-First Runtime: the transactional control plane for AI agents (a kopf operator)."""

API_GROUP = "aifirst.dev"
API_VERSION = "v1alpha1"
__version__ = "0.1.0"
