# The operator's image: `docker build -t airun-operator .` (make kind-e2e builds and loads it into kind).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/airun
COPY pyproject.toml README.md ./
COPY controller/ controller/
COPY capabilities/ capabilities/
# An editable install: the capability registry reads capabilities/*.yaml next to the package, so the
# package stays in /opt/airun. The postgresql extra adds the audit store's PostgreSQL driver.
RUN pip install --editable '.[postgresql]' \
 && python -m compileall -q controller \
 && useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin airun \
 && mkdir -p /var/lib/airun/workspaces /var/lib/airun/audit \
 && chown -R 10001:10001 /var/lib/airun

# Non-root, numeric (runAsNonRoot can check it); the chart also runs it with a read-only root filesystem.
USER 10001:10001
EXPOSE 8080 8081 9443
ENTRYPOINT ["airun", "operator"]
CMD ["--bind=0.0.0.0"]
