"""Deployment material: Kubernetes examples and the generated dashboard and rules (deploy/observability)."""
