# The web app and API for a clinic's server: the base install only (no torch), gunicorn, the bundled model.
# Build: docker build -t skinlesion .    Run: docker run -p 8000:8000 skinlesion
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN useradd --create-home --uid 10001 skinlesion
WORKDIR /app
COPY pyproject.toml README.md constraints.txt ./
COPY src ./src
# constraints.txt: the versions the tests passed with, so the image does not change when a dependency is released
RUN pip install --no-cache-dir -c constraints.txt . && rm -rf /root/.cache
USER skinlesion
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"
# Uploads stay in memory; set SKINLESION_RATE_LIMIT (per client per minute), SKINLESION_MAX_UPLOAD_MB and --workers
# to taste.
CMD ["skinlesion", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]
