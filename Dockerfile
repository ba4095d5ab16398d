# exchange-service container image: build stage with the Makefile (the three
# programs only; Node's npm compiles the demo page's client library), runtime stage with the shared libraries they need and
# nothing else: no tests, tools, compilers or curl (the HEALTHCHECK is the
# binary's own --healthcheck). The build context is cut down by .dockerignore.
#
#   docker build --build-arg VERSION=$(git describe --tags --always) \
#                --build-arg COMMIT=$(git rev-parse --short HEAD) -t exchange-service .
#
# Production pins the base images by digest (debian:bookworm-slim@sha256:...)
# and deploys this image by digest: see k8s/overlays/prod/kustomization.yaml.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE} AS build
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      build-essential pkg-config libuv1-dev librdkafka-dev libzookeeper-mt-dev libwslay-dev \
      libjansson-dev libinih-dev libssl-dev libhttp-parser-dev zlib1g-dev nodejs npm \
    && rm -rf /var/lib/apt/lists/*
ARG VERSION=unknown
ARG COMMIT=unknown
WORKDIR /src
COPY Makefile LICENSE ./
COPY common common
COPY supervisor supervisor
COPY workers workers
COPY conf conf
# The fanout's demo page embeds the JavaScript client library, compiled with
# the TypeScript compiler pinned in clients/js/package-lock.json.
COPY clients/js/package.json clients/js/package-lock.json clients/js/tsconfig.json clients/js/
COPY clients/js/src clients/js/src
RUN npm ci --prefix clients/js --no-audit --no-fund --loglevel=error
RUN make -j"$(nproc)" BUILD=/out VERSION="$VERSION" COMMIT="$COMMIT" bins \
    && make install BUILD=/out VERSION="$VERSION" COMMIT="$COMMIT" PREFIX=/opt/exchange-service DESTDIR=/stage \
    && install -D -m 644 LICENSE /stage/opt/exchange-service/share/doc/exchange-service/LICENSE

FROM ${BASE_IMAGE}
ARG VERSION=unknown
ARG COMMIT=unknown
LABEL org.opencontainers.image.title="exchange-service" \
      org.opencontainers.image.description="Market-data relay: exchange WebSockets to Kafka to WebSocket clients" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${COMMIT}" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libuv1 librdkafka1 libzookeeper-mt2 libwslay1 libjansson4 libinih1 libssl3 libhttp-parser2.9 zlib1g \
      ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin exchange
COPY --from=build /stage/opt/exchange-service /opt/exchange-service
ENV EXCHANGE_PROFILE=docker \
    EXCHANGE_CONF_DIR=/opt/exchange-service/etc/exchange-service
USER 10001:10001
EXPOSE 8080 8090 8091
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["/opt/exchange-service/bin/exchange-service", "--healthcheck"]
STOPSIGNAL SIGTERM
# Exec form: the supervisor is PID 1, receives SIGTERM and reaps every child.
ENTRYPOINT ["/opt/exchange-service/bin/exchange-service"]
