"""The web app: create_app() builds Flask around one Predictor (our 'database') and one blueprint."""

import io
import os

from flask import Flask, Request

from skinlesion.predict import Predictor


class InMemoryRequest(Request):
    """Keep uploads in memory: a medical photo is never written to disk, not even to a temp file."""

    def _get_file_stream(self, total_content_length, content_type, filename=None, content_length=None):
        return io.BytesIO()


def create_app(test_config: dict | None = None) -> Flask:
    """Build the app; the model comes from test_config, $SKINLESION_MODEL or the bundled model."""
    app = Flask(__name__)
    app.request_class = InMemoryRequest
    app.config.from_mapping(
        MODEL=os.environ.get("SKINLESION_MODEL") or None,
        MODEL_THREADS=int(os.environ.get("SKINLESION_THREADS", "0")),
        MAX_CONTENT_LENGTH=10 * 1024 * 1024,  # 10 MB: far above any dermoscopic JPEG
        RATE_LIMIT=int(os.environ.get("SKINLESION_RATE_LIMIT", "60")),  # predictions per client per minute
        # Reverse proxies in front of the app (e.g. 1 for nginx): only then is X-Forwarded-For the client's address.
        # Off by default, since without a proxy a client could name any address and escape the rate limit.
        TRUSTED_PROXIES=int(os.environ.get("SKINLESION_TRUSTED_PROXIES", "0")),
    )
    if test_config:
        app.config.update(test_config)
    if app.config["TRUSTED_PROXIES"]:
        from werkzeug.middleware.proxy_fix import ProxyFix
        hops = app.config["TRUSTED_PROXIES"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)
    app.extensions["predictor"] = Predictor(app.config["MODEL"], threads=app.config["MODEL_THREADS"])
    from skinlesion.web import views
    app.extensions["rate_limiter"] = views.RateLimiter()
    app.register_blueprint(views.bp)
    return app
