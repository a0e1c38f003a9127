FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# Every dependency at the version and hashes in the lock (regenerate it with the command in its header); this
# layer is rebuilt only when the lock changes.
COPY requirements.lock ./
RUN pip install --require-hashes --prefix=/install -r requirements.lock
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY cogs ./cogs
# --no-deps: the lock above is the whole dependency set; nothing is resolved here
RUN pip install --no-deps --prefix=/install .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 fluxpaint && mkdir /data && chown fluxpaint /data
COPY --from=build /install /usr/local
USER fluxpaint
WORKDIR /home/fluxpaint
# /healthz and /metrics on the container's loopback; set FLUXPAINT_OPS__LISTEN=0.0.0.0:9108 (and publish the port)
# for a Prometheus outside the container
ENV FLUXPAINT_STORAGE__DATA_DIR=/data PYTHONUNBUFFERED=1 FLUXPAINT_OPS__LISTEN=127.0.0.1:9108
VOLUME ["/data"]
# healthy: the gateway is connected, the store answers and the scheduler runs (GET /healthz answers 200);
# `fluxpaint healthcheck` asks the address in ops.listen, so it follows a changed FLUXPAINT_OPS__LISTEN
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 CMD ["fluxpaint", "healthcheck"]
# SIGTERM: stop taking jobs, persist, exit; unfinished jobs resume at the next start
STOPSIGNAL SIGTERM
ENTRYPOINT ["fluxpaint"]
CMD ["run"]
