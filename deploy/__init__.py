"""Deployment beyond one machine: the local cluster (cluster.py), nginx and Redis configs, Kubernetes manifests."""
