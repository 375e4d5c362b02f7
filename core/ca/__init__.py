"""The control plane's certificate authority (`shoal controlplane`).

    from core.ca.authority import CertificateAuthority   # signing rules
    from core.ca.store import load_or_create, rotate_root  # state dir / cacerts
    from core.ca.server import CaServer                    # HTTPS API on 15012
"""
