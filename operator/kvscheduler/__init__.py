"""kvscheduler: a Kubernetes-style list-watch scheduler that speaks only the etcd API."""
