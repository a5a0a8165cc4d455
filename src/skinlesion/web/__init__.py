"""The web app: create_app() builds Flask around one Predictor (our 'database') and one blueprint."""

import io
import os

from flask import Flask, Request

from skinlesion.predict import Predictor


class InMemoryRequest(Request):
    """Keep uploads in memory: a medical photo is never written to disk, not even to a temp file."""

    def _get_file_stream(self, total_content_length, content_type, filename=None, content_length=None):
        return io.BytesIO()


# Settings a server reads from its environment: config key -> (variable, default, least allowed value).
ENVIRONMENT = {
    "MODEL_THREADS": ("SKINLESION_THREADS", 0, 0),  # onnxruntime threads per worker; 0: up to 4
    "RATE_LIMIT": ("SKINLESION_RATE_LIMIT", 60, 1),  # predictions per client per minute
    # Largest upload in MB (answered 413 above it): 10 is far above any dermoscopic JPEG; raise it for a camera's
    # uncompressed TIFFs. Decoding still stops at 64 megapixels (imaging.py).
    "MAX_UPLOAD_MB": ("SKINLESION_MAX_UPLOAD_MB", 10, 1),
    # Reverse proxies in front of the app (e.g. 1 for nginx): only then is X-Forwarded-For the client's address.
    # Off by default, since without a proxy a client could name any address and escape the rate limit.
    "TRUSTED_PROXIES": ("SKINLESION_TRUSTED_PROXIES", 0, 0),
}


def settings_from_environment(environ=os.environ) -> dict:
    """Read the server's settings from $SKINLESION_*; a bad value fails with the variable's name and what it needs."""
    settings = {"MODEL": environ.get("SKINLESION_MODEL") or None}
    for key, (variable, default, least) in ENVIRONMENT.items():
        text = environ.get(variable, "").strip()
        try:
            value = int(text) if text else default
        except ValueError:
            value = None
        if value is None or value < least:
            raise ValueError(f"{variable}={text!r}: expected a whole number of at least {least}")
        settings[key] = value
    return settings


def create_app(test_config: dict | None = None) -> Flask:
    """Build the app; the model comes from test_config, $SKINLESION_MODEL or the bundled model."""
    app = Flask(__name__)
    app.request_class = InMemoryRequest
    app.config.from_mapping(settings_from_environment())
    if test_config:
        app.config.update(test_config)
    app.config["MAX_CONTENT_LENGTH"] = app.config["MAX_UPLOAD_MB"] * 1024 * 1024
    if app.config["TRUSTED_PROXIES"]:
        from werkzeug.middleware.proxy_fix import ProxyFix
        hops = app.config["TRUSTED_PROXIES"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)
    app.extensions["predictor"] = Predictor(app.config["MODEL"], threads=app.config["MODEL_THREADS"])
    from skinlesion.web import views
    app.extensions["rate_limiter"] = views.RateLimiter()
    app.register_blueprint(views.bp)
    return app
