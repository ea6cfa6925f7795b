from flask import Blueprint, current_app, jsonify, render_template
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from .models import Counter, db

bp = Blueprint("pages", __name__)


@bp.get("/")
def home():
    visits = Counter.increment("home")
    return render_template("index.html", visits=visits)


@bp.get("/healthz")
def healthz():
    """Liveness: the process serves requests. Touches nothing else, so a
    database outage never gets healthy app containers restarted."""
    return jsonify(status="ok", release=current_app.config["APP_RELEASE"])


@bp.get("/readyz")
def readyz():
    """Readiness: the app can reach its database."""
    try:
        db.session.execute(text("SELECT 1"))
    except SQLAlchemyError as error:
        db.session.rollback()
        current_app.logger.warning("readiness check failed: %s", error.__class__.__name__)
        return jsonify(status="unavailable", database="unreachable"), 503
    return jsonify(status="ok", database="ok")
