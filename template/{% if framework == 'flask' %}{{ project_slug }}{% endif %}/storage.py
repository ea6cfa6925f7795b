"""Uploaded files (docs/uploads.md): saved on the media volume, which nginx
serves at /media/, or in an S3-compatible bucket when AWS_STORAGE_BUCKET_NAME
is set (boto3 reads AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY itself).

    name = storage.save(request.files["file"])  # a name of its own: never replaces a file
    storage.url(name)                           # where browsers get it
    storage.exists(name)

A name is uploads/<32 hex digits>-<the file's name, made safe>: unique, and
never outside the media directory, whatever the client called the file.
"""

import mimetypes
import os
import re
import shutil
import uuid
from functools import cache
from pathlib import Path
from urllib.parse import quote

from flask import Flask, current_app
from werkzeug.datastructures import FileStorage
from werkzeug.utils import secure_filename

# The names save() gives: anything else is not an upload of this app's.
NAME = re.compile(r"uploads/[0-9a-f]{32}-[A-Za-z0-9._-]{1,100}")
# Shown in the browser; anything else downloads (as nginx serves /media/).
INLINE_TYPES = {"image/avif", "image/gif", "image/jpeg", "image/png", "image/webp"}
S3_SETTINGS = (
    "AWS_STORAGE_BUCKET_NAME",
    "AWS_S3_ENDPOINT_URL",
    "AWS_S3_REGION_NAME",
    "AWS_S3_ADDRESSING_STYLE",
)


def init_app(app: Flask) -> None:
    """The settings from the environment, where create_app was given none."""
    media_root = os.environ.get("MEDIA_ROOT") or Path(app.root_path).parent / "media"
    app.config.setdefault("MEDIA_ROOT", str(media_root))
    app.config.setdefault("MEDIA_URL", "/media/")
    for name in S3_SETTINGS:
        app.config.setdefault(name, os.environ.get(name) or None)
    # The largest request body, as nginx's client_max_body_size with the same
    # MAX_UPLOAD_SIZE: past it, reading the form raises RequestEntityTooLarge.
    if app.config["MAX_CONTENT_LENGTH"] is None:
        app.config["MAX_CONTENT_LENGTH"] = size(os.environ.get("MAX_UPLOAD_SIZE") or "10m")


def size(value: str) -> int:
    """Bytes from a size written as nginx reads it: 512k, 10m, 1g."""
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    text = value.strip().lower()
    number, unit = (text[:-1], units[text[-1]]) if text[-1:] in units else (text, 1)
    if not number.isdigit():
        raise RuntimeError(f"MAX_UPLOAD_SIZE must be a size such as 512k or 10m, not {value!r}.")
    return int(number) * unit


def save(file: FileStorage) -> str:
    """Store an uploaded file under a new name, and return that name."""
    original = secure_filename(file.filename or "")[-100:].lstrip("._") or "file"
    name = f"uploads/{uuid.uuid4().hex}-{original}"
    bucket = current_app.config["AWS_STORAGE_BUCKET_NAME"]
    if bucket:
        # The type from the name, never the client's say, as nginx does.
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        extra = {"ContentType": content_type}
        if content_type not in INLINE_TYPES:
            extra["ContentDisposition"] = "attachment"
        _s3().upload_fileobj(file.stream, bucket, name, ExtraArgs=extra)
        return name
    path = Path(current_app.config["MEDIA_ROOT"], name)
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    # "x": fail rather than replace a file, were a name ever drawn twice.
    # Readable by nginx, which runs as another user.
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), "wb") as out:
        shutil.copyfileobj(file.stream, out)
    return name


def url(name: str) -> str:
    """The file's address: under /media/, or a link to the bucket that
    expires after an hour (the bucket stays private)."""
    bucket = current_app.config["AWS_STORAGE_BUCKET_NAME"]
    if bucket:
        params = {"Bucket": bucket, "Key": name}
        return _s3().generate_presigned_url("get_object", Params=params, ExpiresIn=3600)
    return current_app.config["MEDIA_URL"] + quote(name)


def exists(name: str) -> bool:
    """Whether NAME is a file that save() stored."""
    if not NAME.fullmatch(name):
        return False
    bucket = current_app.config["AWS_STORAGE_BUCKET_NAME"]
    if not bucket:
        return Path(current_app.config["MEDIA_ROOT"], name).is_file()
    from botocore.exceptions import ClientError

    try:
        _s3().head_object(Bucket=bucket, Key=name)
    except ClientError as error:
        if error.response["Error"]["Code"] in ("404", "NoSuchKey"):
            return False
        raise
    return True


def _s3():
    return _client(*(current_app.config[name] for name in S3_SETTINGS[1:]))


@cache
def _client(endpoint_url: str | None, region: str | None, addressing_style: str | None):
    # Imported here: boto3 takes time and memory that an app without a
    # bucket never needs.
    import boto3
    from botocore.config import Config

    # Signature version 4: the only one that newer AWS regions and most other
    # providers accept, for requests and for the links url() signs.
    config = Config(signature_version="s3v4", s3={"addressing_style": addressing_style or "auto"})
    return boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)
