"""Middleware that runs before Django's own (see MIDDLEWARE in config/settings.py)."""

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from . import views


class HealthCheckMiddleware:
    """Answers /healthz and /readyz before any other middleware.

    The container healthcheck asks http://127.0.0.1:8000/healthz: plain HTTP,
    with a Host that is in no ALLOWED_HOSTS. Further down, host validation
    would refuse it (400) and, with HTTPS_ENABLED, SecurityMiddleware would
    redirect it to https. Neither protects anything here: the answers do not
    depend on the Host or the scheme, and they carry no secrets.
    """

    paths = {"/healthz": views.healthz, "/readyz": views.readyz}

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        view = self.paths.get(request.path_info)
        if view is not None and request.method in ("GET", "HEAD"):
            return view(request)
        return self.get_response(request)


class ForwardedForMiddleware:
    """Sets REMOTE_ADDR to the client's address, from X-Forwarded-For.

    The peer is always nginx. As the edge (TRUSTED_PROXY_HOPS=1) it sets
    X-Forwarded-For to the address the request came from; behind a proxy of
    yours it appends that address to the proxy's header. Only the last
    TRUSTED_PROXY_HOPS entries are trusted, so a client cannot forge its
    address by sending the header itself.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response
        self.hops = settings.TRUSTED_PROXY_HOPS

    def __call__(self, request: HttpRequest) -> HttpResponse:
        header = request.META.get("HTTP_X_FORWARDED_FOR", "")
        addresses = [address.strip() for address in header.split(",") if address.strip()]
        if self.hops > 0 and len(addresses) >= self.hops:
            request.META["REMOTE_ADDR"] = addresses[-self.hops]
        return self.get_response(request)
