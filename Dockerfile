# nnserve, the prediction service: serving dependencies only (onnxruntime, FastAPI, ...), no
# torch. Build: docker build -t nnserve:0.1.0 .   (or `docker compose build nnserve`)
# The committed model repository is copied to /models; mount a volume there to serve another.

FROM python:3.11.13-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/nnserve
WORKDIR /src
COPY pyproject.toml README.md ./
COPY modelrepo/ modelrepo/
COPY predictionlog/ predictionlog/
COPY service/ service/
# The base dependencies of pyproject.toml are the serving ones; torch is only in [train].
RUN /opt/nnserve/bin/pip install . \
    && if /opt/nnserve/bin/pip show torch >/dev/null 2>&1; then echo "torch in the service image" >&2; exit 1; fi

FROM python:3.11.13-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/nnserve/bin:$PATH \
    NNSERVE_HOST=0.0.0.0 \
    NNSERVE_PORT=8000 \
    NNSERVE_MODEL_REPOSITORY=/models \
    NNSERVE_DATA_DIR=/data
RUN groupadd --system --gid 10001 nnserve \
    && useradd --system --uid 10001 --gid nnserve --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin nnserve \
    && install -d -o 10001 -g 10001 /data
COPY --from=build /opt/nnserve /opt/nnserve
COPY --chown=10001:10001 models/ /models/
WORKDIR /srv
USER 10001:10001
# /data holds the prediction log (SQLite, WAL): keep it on a volume so no prediction is lost
VOLUME ["/models", "/data"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/v2/health/ready' % os.environ.get('NNSERVE_PORT', '8000'), timeout=4)" || exit 1
CMD ["python", "-m", "service"]
