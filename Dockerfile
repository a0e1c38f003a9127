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
ENV FLUXPAINT_STORAGE__DATA_DIR=/data PYTHONUNBUFFERED=1
VOLUME ["/data"]
# SIGTERM: stop taking jobs, persist, exit; unfinished jobs resume at the next start
STOPSIGNAL SIGTERM
ENTRYPOINT ["fluxpaint"]
CMD ["run"]
