# Multi-stage build of the `taskflow` binary (API, worker and CLI in one)
# and the example plugins.
FROM rust:1.95-bookworm AS build
WORKDIR /src
RUN rustup target add wasm32-wasip2
COPY . .
RUN cargo build --release -p taskflow \
 && scripts/build-plugins

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --create-home --home-dir /var/lib/taskflow taskflow
COPY --from=build /src/target/release/taskflow /usr/local/bin/taskflow
COPY --from=build /src/target/wasm32-wasip2/plugin/*.wasm /usr/share/taskflow/plugins/
USER taskflow
# The worker's compiled-module cache: private to the worker, never shared.
ENV TASKFLOW_CACHE_DIR=/var/lib/taskflow/cache
ENTRYPOINT ["taskflow"]
CMD ["api"]
