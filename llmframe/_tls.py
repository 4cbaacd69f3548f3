"""TLS for https endpoints: the client context, and what a failed verification means.

:func:`client_context` is the standard library's default (the system's CAs, which OpenSSL
takes from ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` when they are set; hostname verification;
TLS 1.2+) offering ALPN ``http/1.1`` (the transports speak HTTP/1.1).

:func:`explain` turns a certificate that fails verification into one line that names the
problem and its remedy: an expired certificate, one signed by a CA this machine does not
trust (self-signed, an internal CA), or one for another host name. Such an error is not
worth retrying: the row ends with it at once.
"""

from __future__ import annotations

import os
import ssl

__all__ = ["client_context", "explain"]

# OpenSSL's X509_V_ERR_* codes
_EXPIRED = {9: "is not valid yet", 10: "has expired"}
_UNTRUSTED = {2, 18, 19, 20, 21}
_WRONG_HOST = {62, 63, 64}  # host name, e-mail, IP address mismatch


def client_context(*, ca_bundle: str | None = None, client_cert: str | None = None,
                   client_key: str | None = None, verify: bool = True,
                   name: str = "", warn: bool = True) -> ssl.SSLContext:
    """The context for an https endpoint: ``ca_bundle`` (PEM) is trusted besides the
    system's CAs; ``client_cert`` (and ``client_key``, if the key is not in the same PEM)
    for a gateway that asks for one (mTLS); ``verify=False`` turns checking off, loudly (a
    warning naming the endpoint, each run).

    >>> ctx = client_context()
    >>> ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    True
    """
    context = ssl.create_default_context()
    context.set_alpn_protocols(["http/1.1"])
    try:
        if ca_bundle is not None:
            context.load_verify_locations(cafile=ca_bundle)
        if client_cert is not None:
            context.load_cert_chain(client_cert, client_key)
    except (ssl.SSLError, OSError) as exc:
        from ._exceptions import ConfigError

        msg = f"endpoint {name!r}: cannot load its TLS files ({exc}); give PEM files"
        raise ConfigError(msg) from None
    if not verify and warn:
        import warnings

        with warnings.catch_warnings():  # every run, not once per process
            warnings.simplefilter("always")
            warnings.warn(f"endpoint {name!r}: TLS verification is OFF (verify=false): its "
                          "certificate is not checked, so anyone on the path can read and "
                          "change the requests, API key included", RuntimeWarning,
                          stacklevel=2)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def explain(exc: ssl.SSLError, host: str) -> str:
    """What a TLS failure at ``host`` means, and what to do.

    >>> err = ssl.SSLCertVerificationError(1, "certificate verify failed")
    >>> err.verify_code, err.verify_message = 62, "Hostname mismatch"
    >>> explain(err, "10.0.0.5")[:60]
    'TLS: the certificate of 10.0.0.5 is for another host name (H'
    """
    code = getattr(exc, "verify_code", None)
    detail = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or str(exc)
    if code in _EXPIRED:
        return (f"TLS: the certificate of {host} {_EXPIRED[code]} ({detail}): renew it on "
                "the server, or check this machine's clock")
    if code in _UNTRUSTED:
        cafile = os.environ.get("SSL_CERT_FILE")
        if cafile and not os.path.isfile(cafile):
            detail += f"; SSL_CERT_FILE={cafile} is not a file"
        return (f"TLS: the certificate of {host} is not signed by a CA this machine trusts "
                f"({detail}): give the CA's certificate with the endpoint's ca_bundle=PATH "
                "or SSL_CERT_FILE=PATH (or SSL_CERT_DIR); a self-signed test server's own "
                "certificate works as the CA")
    if code in _WRONG_HOST:
        return (f"TLS: the certificate of {host} is for another host name ({detail}): use "
                "the host name the certificate was issued for in the endpoint's URL")
    return f"TLS: the connection to {host} failed its handshake ({detail})"
