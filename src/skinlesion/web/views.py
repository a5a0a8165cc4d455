"""The one blueprint: the page, the model page and the JSON API, with their safety rails."""

import time
from collections import defaultdict, deque
from pathlib import Path

from flask import Blueprint, current_app, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from skinlesion import __version__
from skinlesion.classes import BY_CODE, CLASSES
from skinlesion.imaging import ImageError
from skinlesion.web.openapi import openapi_document

bp = Blueprint("web", __name__)

DISCLAIMER_DETAIL = "This result can be wrong and must not replace an examination by a dermatologist."
DISCLAIMER = "Research tool, not a diagnosis. " + DISCLAIMER_DETAIL
ADVICE = {
    "malignant": "This pattern can belong to a skin cancer. Please see a dermatologist soon and show them this photo.",
    "pre-malignant": "This looks most like actinic keratosis, which can develop into skin cancer. "
                     "Please have it checked by a dermatologist.",
    "benign": "This looks most like a benign lesion, but only a doctor can tell. See a dermatologist if it "
              "changes in size, shape or colour, bleeds, itches or worries you.",
}
UNCERTAIN_ADVICE = "The model is unsure about this image, so do not read much into the result. "
# A benign top class whose cancers and pre-cancers together pass the model's referral threshold (referral.py).
REFER_ADVICE = ("This looks most like a benign lesion, but skin cancers and pre-cancers together reach {concern:.0%}, "
                "too much to rule them out. Please have it checked by a dermatologist.")


def advice(result) -> str:
    """Say what to do about an answer: by its top class's risk group, unless the referral rule asks for a check."""
    if result.risk == "benign" and result.refer:
        text = REFER_ADVICE.format(concern=result.concern)
    else:
        text = ADVICE[result.risk]
    return (UNCERTAIN_ADVICE if result.uncertain else "") + text


def predictor():
    return current_app.extensions["predictor"]


def api_error(status: int, error: str, message: str):
    response = jsonify(error=error, message=message)
    response.status_code = status
    return response


class RateLimiter:
    """A sliding one-minute window per client, per worker process; bounded memory."""

    def __init__(self):
        self.calls = defaultdict(deque)

    def allow(self, client: str, limit: int) -> bool:
        now = time.monotonic()
        window = self.calls[client]
        while window and now - window[0] > 60:
            window.popleft()
        if len(window) >= limit:
            return False
        window.append(now)
        if len(self.calls) > 10_000:  # forget idle clients rather than grow without end
            for key in [k for k, v in self.calls.items() if not v or now - v[-1] > 60]:
                del self.calls[key]
        return True


@bp.after_app_request
def security_headers(response):
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Permissions-Policy"] = "geolocation=(), microphone=()"
    if request.path.startswith("/api/"):
        response.headers["Cache-Control"] = "no-store"  # results are personal health data
    return response


@bp.app_errorhandler(HTTPException)
def http_error(error: HTTPException):
    if error.code == 413:
        return api_error(413, "too_large", f"The upload is larger than {current_app.config['MAX_UPLOAD_MB']} MB. "
                                           f"Please send a smaller photo.")
    if request.path.startswith("/api/") or request.path == "/healthz" or error.code >= 500:
        return api_error(error.code, error.name.lower().replace(" ", "_"), error.description)
    return render_template("error.html", error=error, disclaimer=DISCLAIMER_DETAIL), error.code


@bp.app_errorhandler(Exception)
def unexpected_error(error: Exception):
    current_app.logger.exception("unexpected error")  # the traceback, never the upload
    return api_error(500, "internal_error", "Something went wrong on our side. Please try again later.")


@bp.get("/")
def index():
    return render_template("index.html", disclaimer=DISCLAIMER_DETAIL, classes=CLASSES)


def limitations(card: dict) -> list[str]:
    """Say what the served model was trained on and where it is weak, from its own card."""
    data = card.get("data")
    if data:  # prepare.data_record, in files exported since 2026-11-29
        rarest = sorted((n, code) for code, n in data["per_class"].items() if code in card["classes"])[:3]
        trained = (f"Trained on {sum(data['train'].values()):,} of the {data['images']:,} photos read from "
                   f"{data['folder']}; the rarest classes have only " + ", ".join(f"{c} {n}" for n, c in rarest)
                   + " photos in all.")
    else:  # files exported before cards recorded their data (2026-11-29), all trained on the sample
        trained = ("Trained on a 12,922-image sample of ISIC 2019, mostly HAM10000 photos; rare classes (AK, DF, "
                   "VASC, SCC) have only 115-197 images.")
    recall = card.get("metrics", {}).get("test", {}).get("recall", {})
    weak = {code: r for code, r in recall.items() if r is not None and r < 0.5}
    missed = []
    if weak:
        names = " and ".join(BY_CODE[c].name if i == 0 else BY_CODE[c].name.lower() for i, c in enumerate(weak))
        shares = " and ".join(f"{r:.0%}" for r in weak.values())
        verb, pronoun = ("was", "it") if len(weak) == 1 else ("were", "them")
        missed = [f"{names} {verb} recognised in only {shares} of held-out lesions; an answer naming another "
                  f"diagnosis does not rule {pronoun} out."]
    return [trained, *missed, "Only dermoscopic photos of a single lesion are meaningful input; the model knows "
            "nothing about your history.", "Send the photo as the dermatoscope or camera saved it: recompressed by "
            "a messaging app (JPEG quality 50, WebP) it loses the fine detail the model relies on, and about a tenth "
            "of its accuracy.", "It is a research tool, not a medical device, and it can be wrong in either "
            "direction."]


def patient_groups(card: dict) -> list[str]:
    """The card's test-split lines by sex, age and site (evaluate's subgroups), if it has them: a list, not the
    string saying why they were not scored."""
    lines = card.get("metrics", {}).get("test", {}).get("subgroups")
    return lines if isinstance(lines, list) else []


@bp.get("/about")
def about():
    p = predictor()
    return render_template("about.html", card=p.card, version=p.version, classes=[BY_CODE[c] for c in p.classes],
                           limitations=limitations(p.card), patient_groups=patient_groups(p.card),
                           disclaimer=DISCLAIMER_DETAIL)


@bp.get("/healthz")
def healthz():
    return jsonify(status="ok", model_version=predictor().version)


@bp.get("/api/v1/model")
def model_card():
    p = predictor()
    classes = [{"code": c.code, "name": c.name, "risk": c.risk} for c in (BY_CODE[k] for k in p.classes)]
    return jsonify(model_version=p.version, card=p.card, classes=classes, disclaimer=DISCLAIMER)


@bp.get("/api/v1/openapi.json")
def openapi():
    return jsonify(openapi_document(__version__, current_app.config["MAX_UPLOAD_MB"]))


@bp.post("/api/v1/predict")
def predict():
    client = request.remote_addr or "unknown"
    if not current_app.extensions["rate_limiter"].allow(client, current_app.config["RATE_LIMIT"]):
        return api_error(429, "rate_limited", "Too many requests. Please wait a minute and try again.")
    upload = request.files.get("image")
    if upload is None:
        return api_error(400, "missing_image", "Send the photo as the multipart form field 'image'.")
    data = upload.read()
    if not data:
        return api_error(400, "empty_upload", "The uploaded file is empty.")
    try:
        result = predictor().assess(data, heatmap=request.form.get("heatmap") == "1",
                                    name=Path(upload.filename or "").stem)
    except ImageError as error:
        return api_error(415, "not_an_image", f"This file cannot be read as an image: {error}. "
                                              "Please send a JPEG, PNG or HEIC photo.")
    if not result.assessable:
        return api_error(422, "cannot_assess", f"Cannot assess this image: {result.reason}.")
    lesion = BY_CODE[result.label]
    body = {
        "label": result.label, "name": lesion.name, "probability": result.probabilities[result.label],
        "probabilities": result.probabilities, "risk": result.risk, "uncertain": result.uncertain,
        "refer": result.refer, "concern": result.concern, "advice": advice(result),
        "model_version": predictor().version, "disclaimer": DISCLAIMER,
        # One of the model's own photos (by its ISIC id or its pixels) would flatter it; the page says so.
        "seen_by_model": result.seen_by_model,
    }
    if result.heatmap_png:
        body["heatmap"] = "data:image/png;base64," + result.heatmap_png
    return jsonify(body)
