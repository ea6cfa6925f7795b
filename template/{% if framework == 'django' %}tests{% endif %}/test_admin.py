import re

import pytest
from django.test import Client

PASSWORD = "correct horse battery staple"  # noqa: S105 (a test user's)
# A browser on https://www.example.org:8443, as nginx passes its request on.
BROWSER = {"HTTP_HOST": "www.example.org:8443", "HTTP_ORIGIN": "https://www.example.org:8443"}


@pytest.fixture
def admin_user(django_user_model, settings):
    settings.ALLOWED_HOSTS = ["www.example.org"]
    return django_user_model.objects.create_superuser("admin", "admin@example.org", PASSWORD)


def log_in(client: Client, **headers) -> int:
    page = client.get("/admin/login/", **headers)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    form = {"username": "admin", "password": PASSWORD, "csrfmiddlewaretoken": token}
    response = client.post("/admin/login/?next=/admin/", form, **headers)
    return response.status_code


@pytest.mark.django_db
def test_admin_login_page_links_hashed_css(client):
    page = client.get("/admin/login/").text
    assert re.search(r'href="/static/admin/css/base\.[0-9a-f]{12}\.css"', page)


@pytest.mark.django_db
def test_admin_login_over_forwarded_https_passes_the_csrf_check(admin_user):
    client = Client(enforce_csrf_checks=True)
    assert log_in(client, HTTP_X_FORWARDED_PROTO="https", **BROWSER) == 302
    assert client.get("/admin/", HTTP_X_FORWARDED_PROTO="https", **BROWSER).status_code == 200


@pytest.mark.django_db
def test_without_the_forwarded_scheme_the_origin_does_not_match(admin_user):
    # The same browser request, had nginx not said it came over https: the
    # origin check fails. This is what SECURE_PROXY_SSL_HEADER prevents.
    assert log_in(Client(enforce_csrf_checks=True), **BROWSER) == 403
