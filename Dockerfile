# Atlas in a container: `atlas run` against an external PostgreSQL (see compose.yaml).
# Build: docker build -t atlas .
FROM python:3.12-slim AS build
WORKDIR /opt/atlas
COPY pyproject.toml README.md ./
COPY atlas ./atlas
RUN python -m venv /opt/atlas/.venv \
 && /opt/atlas/.venv/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/atlas/.venv/bin/pip install --no-cache-dir .

FROM python:3.12-slim
RUN useradd --system --home-dir /var/lib/atlas --create-home atlas
COPY --from=build /opt/atlas/.venv /opt/atlas/.venv
ENV PATH=/opt/atlas/.venv/bin:$PATH \
    ATLAS_HTTP_HOST=0.0.0.0 \
    ATLAS_HTTP_PORT=8080 \
    ATLAS_DATA_DIR=/var/lib/atlas
USER atlas
WORKDIR /var/lib/atlas
EXPOSE 8080
# /healthz answers while the process is alive; /readyz only when the database and the tree are up.
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=2).status != 200)"
# Migrations first (safe from several replicas at once: they take an advisory lock), then the tree.
CMD ["sh", "-c", "atlas migrate && exec atlas run"]
