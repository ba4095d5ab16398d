# exchange-service container image: build stage with the Makefile, runtime
# stage with only the shared libraries the binaries need.
FROM debian:bookworm-slim AS build
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      build-essential pkg-config libuv1-dev librdkafka-dev libzookeeper-mt-dev libwslay-dev \
      libjansson-dev libinih-dev libssl-dev libhttp-parser-dev libcmocka-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Makefile ./
COPY common common
COPY supervisor supervisor
COPY workers workers
COPY test/kafka test/kafka
COPY test/unit test/unit
COPY test/tools test/tools
COPY conf conf
RUN make -j"$(nproc)" BUILD=/out all \
    && make install BUILD=/out PREFIX=/opt/exchange-service DESTDIR=/stage

FROM debian:bookworm-slim
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libuv1 librdkafka1 libzookeeper-mt2 libwslay1 libjansson4 libinih1 libssl3 libhttp-parser2.9 \
      ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin exchange
COPY --from=build /stage/opt/exchange-service /opt/exchange-service
ENV EXCHANGE_PROFILE=docker \
    EXCHANGE_CONF_DIR=/opt/exchange-service/etc/exchange-service
USER 10001:10001
EXPOSE 8080 8090 8091
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8090/healthz || exit 1
STOPSIGNAL SIGTERM
# Exec form: the supervisor is PID 1, receives SIGTERM and reaps every child.
ENTRYPOINT ["/opt/exchange-service/bin/exchange-service"]
