"""Run the app under gunicorn (production) or Flask's development server."""

import os

from gunicorn.app.base import BaseApplication


class GunicornServer(BaseApplication):
    """gunicorn with our settings; each worker builds its own app and onnxruntime session."""

    def __init__(self, options: dict):
        self.options = options
        super().__init__()

    def load_config(self):
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        from skinlesion.web import create_app
        return create_app()


def serve(host: str, port: int, workers: int, model: str | None, dev: bool) -> None:
    """Serve the web app; the model path reaches every worker through $SKINLESION_MODEL."""
    if model:
        os.environ["SKINLESION_MODEL"] = str(model)
    # Share the cores between workers so onnxruntime threads do not fight each other.
    os.environ.setdefault("SKINLESION_THREADS", str(max(1, (os.cpu_count() or 1) // max(workers, 1))))
    if dev:
        from skinlesion.web import create_app
        create_app().run(host=host, port=port, debug=False)
        return
    GunicornServer({"bind": f"{host}:{port}", "workers": workers, "timeout": 60, "graceful_timeout": 10,
                    "accesslog": "-", "access_log_format": '%(h)s "%(r)s" %(s)s %(b)s %(M)sms',
                    "limit_request_line": 4094, "worker_tmp_dir": "/dev/shm" if os.path.isdir("/dev/shm") else None,
                    }).run()
