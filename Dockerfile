# syntax=docker/dockerfile:1
#
# ailake-reconciler image: build a wheel set in one stage, install it into a venv in a clean
# runtime stage. Runs as UID 10001, writes only under /data (a volume), so it works with
# readOnlyRootFilesystem: true (Kubernetes also mounts an emptyDir on /tmp). The runtime has
# the git CLI, ssh and the CA bundle for the built-in git follower (run --git-url), whose
# cache lives beside the state, in /data/.reconciler-git.
#
#   docker build -t ailake-reconciler:0.1.0 .
#   docker run --read-only -v state:/data -p 8080:8080 \
#     -e RECONCILER_API_URL=https://example.gooddata.com -e RECONCILER_API_TOKEN=... \
#     -v "$PWD/manifests:/manifests:ro" ailake-reconciler:0.1.0 run --manifests /manifests
#   docker run --read-only -v state:/data -p 8080:8080 \
#     -e RECONCILER_API_URL=https://example.gooddata.com -e RECONCILER_API_TOKEN=... \
#     ailake-reconciler:0.1.0 run --git-url https://github.com/example/manifests.git

# ---------------------------------------------------------------------------------------------
FROM python:3.11.11-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
COPY . .

# The project's wheel plus a wheel for every runtime dependency: the runtime stage installs
# offline from this directory, so it needs no compiler and no network.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# ---------------------------------------------------------------------------------------------
FROM python:3.11.11-slim-bookworm AS runtime

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="ailake-reconciler" \
      org.opencontainers.image.description="GitOps controller for GoodData Cloud AI Lake service commands" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    RECONCILER_STATE=/data/reconciler-state.db \
    RECONCILER_LISTEN=0.0.0.0:8080

# git, ssh and CA certificates for the built-in git follower. Not pinned to a version on
# purpose: the base image's Debian release receives security fixes for them, and a pinned
# version disappears from the mirror with the next one (the build would break).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git openssh-client ca-certificates \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*

# Wheels are bind-mounted from the build stage, so they never become an image layer.
# pip byte-compiles the installed modules here, at build time, so nothing is written at run
# time (PYTHONDONTWRITEBYTECODE=1 covers anything imported that was not precompiled).
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --no-index --find-links=/wheels \
        /wheels/ailake_reconciler-*.whl \
    && groupadd --system --gid 10001 reconciler \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /data \
        --shell /usr/sbin/nologin reconciler \
    && mkdir -p /data \
    && chown 10001:10001 /data \
    && chmod 0750 /data

WORKDIR /data
VOLUME ["/data"]
USER 10001
EXPOSE 8080

ENTRYPOINT ["reconciler"]
CMD ["run"]
