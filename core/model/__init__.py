"""The config model: Kubernetes YAML -> typed, validated resources.

    from shoal.core.model import load_dir, load_text, ConfigError
    cfg = load_dir("examples/bookinfo")      # ConfigSet; raises ConfigError (all errors)
    cfg.counts(), cfg.notes, cfg.of(Service)
"""

from shoal.core.model.errors import ConfigError, FieldError
from shoal.core.model.loader import SUPPORTED_KINDS, load_dir, load_text, yaml_files
from shoal.core.model.parse_core import ANNOTATION_POD_IPS, effective_pods, replica_pods
from shoal.core.model.resources import (AuthorizationPolicy, ConfigSet, Deployment, EndpointSlice, Gateway,
                                  HTTPRoute, Meta, Namespace, Note, Pod, Service,
                                  ServicePortSpec)

__all__ = ["ANNOTATION_POD_IPS", "AuthorizationPolicy", "ConfigError", "ConfigSet", "Deployment",
           "EndpointSlice",
           "FieldError", "Gateway", "HTTPRoute", "Meta", "Namespace", "Note", "Pod",
           "SUPPORTED_KINDS", "Service", "ServicePortSpec", "effective_pods", "load_dir", "load_text",
           "replica_pods", "yaml_files"]
