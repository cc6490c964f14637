# herald: multi-stage build, non-root runtime.
#   docker build -t herald .
#   docker run --rm herald --help
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libssl-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Cargo.toml declares the benchmark target, so its file must be there to build at all.
COPY benches ./benches
RUN cargo build --release --locked --bin herald

FROM debian:bookworm-slim
# ca-certificates for the push services' TLS; libssl3 for web-push's encryption;
# redis-server so that `herald up` can run its embedded Redis in a container too;
# curl for health checks against /readyz.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 redis-server curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/herald --create-home herald \
    && mkdir -p /keys /var/lib/herald/data \
    && chown herald:herald /keys /var/lib/herald/data
COPY --from=build /src/target/release/herald /usr/local/bin/herald
COPY config.toml /etc/herald/config.toml
USER herald
WORKDIR /var/lib/herald
ENV HERALD_DATA_DIR=/var/lib/herald/data
EXPOSE 8080 9464
ENTRYPOINT ["herald", "--config", "/etc/herald/config.toml"]
CMD ["up"]
