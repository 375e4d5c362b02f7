"""The ztunnel's I/O side, split as istio/ztunnel's `src/proxy/` is.

- `netns.Proxy`: the listeners of one network namespace (the node's in
  dedicated mode, one pod's in in-pod mode): lifecycle, reconcile, drain.
- `outbound.Outbound` (15001 capture -> HBONE or plaintext upstream),
  `inbound.Inbound` (15008 HBONE server), `passthrough.InboundPassthrough`
  (15006 plaintext inbound): one connection each, over the shared
  `inputs.ProxyInputs` (view, certificates, metrics, socket factory, pool).
- `record.ConnectionRecord`: one connection's telemetry, opened once and
  closed once (metrics and the access log line are emitted in one place).

The decisions these adapters act on are pure and live one level up
(`ztunnel.outbound.resolve`, `ztunnel.inbound.decide_*`).
"""
