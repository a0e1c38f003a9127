FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY cogs ./cogs
RUN pip install --no-cache-dir --prefix=/install .

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
