"""Load runs against real peers (stunnel, haproxy, nginx, iperf3, wrk, h2load).

Run from a checkout: they drive processes through tests/helpers, so they are
not part of the wheel. `make bench-load` runs the headline ones.
"""
