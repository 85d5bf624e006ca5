# The operator's image: `docker build -t airun-operator .` (make kind-e2e and make e2e build it).
# BASE_IMAGE: any Debian-based image with python3 (3.11+) and its venv module. The default is the usual one;
# `make e2e` builds a Debian bookworm base with mmdebstrap instead (no registry is reachable there).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# Metadata first, the code last: a change of the code rebuilds the last layers only.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
EXPOSE 8080 8081 9443
ENTRYPOINT ["airun", "operator"]
CMD ["--bind=0.0.0.0"]
WORKDIR /opt/airun

# One layer: .dockerignore lets pyproject.toml, README.md, controller/ and capabilities/ through, nothing else.
COPY . ./
# A virtualenv: Debian's own python3 refuses installs into the system (PEP 668); python:3.x-slim does not
# care. An editable install: the capability registry reads capabilities/*.yaml next to the package, so the
# package stays in /opt/airun. The postgresql extra adds the audit store's PostgreSQL driver.
RUN python3 -m venv /opt/venv \
 && pip install --editable '.[postgresql]' \
 && python3 -m compileall -q controller \
 && useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin airun \
 && mkdir -p /var/lib/airun/workspaces /var/lib/airun/audit \
 && chown -R 10001:10001 /var/lib/airun

# Non-root, numeric (runAsNonRoot can check it); the chart also runs it with a read-only root filesystem.
USER 10001:10001
