"""EMAIL_URL, the one setting for outgoing mail (docs/email.md):

    smtp+tls://USER:PASSWORD@HOST:587   STARTTLS, what most providers ask for
    smtp+ssl://USER:PASSWORD@HOST:465   TLS from the first byte
    smtp://HOST:25                      no encryption: a relay on a private network only
    console://                          each message written to the log, never sent

Percent-encode @, : and / in the user and password (@ is %40). A few lines of
the standard library rather than a package: the accepted schemes are the
ones above, each with one meaning, and a mistake stops the app at start
with one line saying what to fix.
"""

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

DEFAULT_PORTS = {"smtp": 25, "smtp+tls": 587, "smtp+ssl": 465}


class MailURLError(ValueError):
    pass


@dataclass(frozen=True)
class MailURL:
    scheme: str
    host: str = ""
    port: int = 0
    user: str = ""
    password: str = ""

    @property
    def starttls(self) -> bool:
        return self.scheme == "smtp+tls"

    @property
    def ssl(self) -> bool:
        return self.scheme == "smtp+ssl"


def parse(url: str) -> MailURL:
    """EMAIL_URL as a MailURL; MailURLError says, in one line, what is wrong."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme == "console":
        return MailURL(scheme)
    # The messages never repeat the URL: it may hold a password.
    if scheme not in DEFAULT_PORTS:
        raise MailURLError(
            "EMAIL_URL must start with smtp+tls://, smtp+ssl://, smtp:// or console://"
            f"{f', not {scheme}://' if scheme else ''} (see docs/email.md)."
        )
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        raise MailURLError("EMAIL_URL's port is not a number from 1 to 65535.") from None
    if not parts.hostname:
        raise MailURLError(f"EMAIL_URL names no host: write {scheme}://USER:PASSWORD@HOST:PORT.")
    return MailURL(
        scheme,
        parts.hostname,
        port,
        unquote(parts.username or ""),
        unquote(parts.password or ""),
    )
