"""The control plane's certificate authority (`shoal controlplane`).

    from shoal.controlplane.authority import CertificateAuthority   # signing rules
    from shoal.controlplane.store import load_or_create, rotate_root  # state dir / cacerts
    from shoal.controlplane.server import CaServer                    # HTTPS API on 15012
"""
