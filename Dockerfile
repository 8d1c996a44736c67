# Atlas API image: slim Python, non-root, gunicorn, healthcheck on /healthz.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY atlas ./atlas
COPY openapi.yaml ./openapi.yaml
RUN rm -f atlas/openapi.yaml && cp openapi.yaml atlas/openapi.yaml \
 && pip wheel --no-cache-dir --wheel-dir /wheels '.[server]'

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ATLAS_MIGRATIONS_DIR=/app/migrations \
    ATLAS_BIND=0.0.0.0:8080 \
    ATLAS_WORKERS=4 \
    ATLAS_THREADS=4
RUN groupadd --system atlas && useradd --system --gid atlas --home-dir /app atlas
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels 'atlas-registry[server]' && rm -rf /wheels
WORKDIR /app
COPY migrations ./migrations
USER atlas
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"
# `atlas serve` validates the settings, then runs gunicorn with atlas.gunicorn_conf: each
# worker opens its ZooKeeper session after the fork and closes it on SIGTERM; one log format.
CMD ["atlas", "serve"]
