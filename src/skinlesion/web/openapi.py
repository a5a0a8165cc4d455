"""The OpenAPI 3 description of the JSON API, served at /api/v1/openapi.json."""

from skinlesion.classes import CODES
from skinlesion.imaging import IMAGE_SUFFIXES

ERROR = {"type": "object", "required": ["error", "message"],
         "properties": {"error": {"type": "string"}, "message": {"type": "string"}}}


def openapi_document(version: str, max_upload_mb: int) -> dict:
    probabilities = {"type": "object", "properties": {c: {"type": "number"} for c in CODES}}
    errors = {str(code): {"description": text, "content": {"application/json": {"schema": ERROR}}}
              for code, text in ((400, "no image field or an unreadable image"),
                                 (413, f"upload over {max_upload_mb} MB"), (415, "the upload is not an image"),
                                 (422, "cannot assess this image"), (429, "too many requests from this client"))}
    return {
        "openapi": "3.0.3",
        "info": {"title": "skinlesion", "version": version,
                 "description": "Classify a dermoscopic photo into the ISIC 2019 diagnoses. "
                                "A research tool, not a diagnosis."},
        "paths": {
            "/api/v1/predict": {"post": {
                "summary": "Classify one image",
                "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                    "type": "object", "required": ["image"],
                    "properties": {"image": {"type": "string", "format": "binary",
                                             "description": f"the photo, a {', '.join(IMAGE_SUFFIXES)} file"},
                                   "heatmap": {"type": "string", "enum": ["0", "1"]}}}}}},
                "responses": {"200": {"description": "the result", "content": {"application/json": {"schema": {
                    "type": "object",
                    "required": ["label", "probabilities", "risk", "uncertain", "refer", "model_version",
                                 "disclaimer"],
                    "properties": {"label": {"type": "string", "enum": list(CODES)}, "name": {"type": "string"},
                                   "probability": {"type": "number"}, "probabilities": probabilities,
                                   "risk": {"type": "string", "enum": ["malignant", "pre-malignant", "benign"]},
                                   "advice": {"type": "string"}, "uncertain": {"type": "boolean"},
                                   "refer": {"type": "boolean", "description": "see a dermatologist: the top class is "
                                             "a cancer or pre-cancer, or MEL, BCC, AK and SCC together reach the "
                                             "model's referral threshold"},
                                   "concern": {"type": "number", "description": "the probabilities of MEL, BCC, "
                                               "AK and SCC added up"},
                                   "heatmap": {"type": "string", "description": "data: URL of a PNG, 256 px on its "
                                               "longer side, shaped as the photo"},
                                   "seen_by_model": {"type": "string", "enum": ["train", "val"], "nullable": True,
                                                     "description": "the file is named like, or its pixels "
                                                                    "nearly match, a photo the model was trained "
                                                                    "(train) or validated (val) on"},
                                   "model_version": {"type": "string"}, "disclaimer": {"type": "string"}}}}}},
                              **errors}}},
            "/api/v1/model": {"get": {"summary": "The model card", "responses": {"200": {"description": "card"}}}},
            "/healthz": {"get": {"summary": "Liveness and the loaded model",
                                 "responses": {"200": {"description": "ok"}}}},
        },
    }
