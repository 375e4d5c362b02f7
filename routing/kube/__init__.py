"""The Kubernetes API as the routing table's config source.

- kinds.py     the watched kinds (lightkube generic resources)
- store.py     sans-IO informer cache: validation per object, diffs, health
- informer.py  list + watch per kind through lightkube (resume, 410, backoff)
- source.py    KubeSource: the watcher's source (`--config kubernetes:[KUBECONFIG]`)
- metrics.py   per-resource sync health as Prometheus series
"""

# `--config kubernetes:[KUBECONFIG]` names this source (the empty path: the
# in-cluster account, else $KUBECONFIG, else ~/.kube/config).
SCHEME = "kubernetes:"
