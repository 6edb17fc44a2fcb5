# syntax=docker/dockerfile:1
# One image for every Workpool pod: the operator, the api, the worker and the helm-test
# smoke program (the chart and the operator pick the binary with `command`). Static musl
# binaries on a distroless base, running as a non-root user.
ARG RUST_VERSION=1.95.0

FROM rust:${RUST_VERSION}-alpine3.22 AS build
# The C parts (ring, mimalloc) need the musl headers; a musl build links statically.
RUN apk add --no-cache musl-dev=~1.2
WORKDIR /src
COPY . .
# The toolchain file asks for clippy and rustfmt, which a release build does not need.
ENV RUSTUP_TOOLCHAIN=${RUST_VERSION} CARGO_TERM_COLOR=never
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
      -p workpool-operator --bin workpool-operator \
      -p workpool-api --bin workpool-api \
      -p workpool-worker --bin workpool-worker --bin workpool-smoke \
 && mkdir /out \
 && cp target/release/workpool-operator target/release/workpool-api \
       target/release/workpool-worker target/release/workpool-smoke /out/

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
EXPOSE 8080 8090
CMD ["workpool-operator"]
