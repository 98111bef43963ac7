# syntax=docker/dockerfile:1
# freshet: one binary, run as `freshet up` or as one role per container (`freshet run store|gateway|delivery|
# reports|dashboard`, see compose.yaml). Multi-stage: a Rust build stage, then a small non-root runtime image.
#
#   docker build -t freshet .
#   docker run --rm -p 8080:8080 -p 1883:1883 freshet up

# ---- build ---------------------------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS build
WORKDIR /src
# The toolchain file pins the same 1.95.0 the image has, with rustfmt/clippy components we do not need here.
COPY . .
RUN rm -f rust-toolchain.toml
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release -p freshet \
 && install -D -m 0755 target/release/freshet /out/freshet \
 && mkdir -p /out/data /out/warehouse

# ---- runtime -------------------------------------------------------------------------------------------------
# distroless/cc: glibc, libgcc, CA certificates, no shell; the `nonroot` tag runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/freshet /usr/local/bin/freshet
# Empty, owned by the runtime user, so named volumes mounted there start writable.
COPY --from=build --chown=65532:65532 /out/data /data
COPY --from=build --chown=65532:65532 /out/warehouse /warehouse
USER 65532:65532
WORKDIR /data
# Containers listen on every interface; the data directory is the volume.
ENV FRESHET_DATA_DIR=/data \
    FRESHET_HTTP__ADDR=0.0.0.0:8080 \
    FRESHET_GATEWAY__LISTENERS__0__ADDR=0.0.0.0:1883
VOLUME ["/data"]
EXPOSE 8080 1883
ENTRYPOINT ["/usr/local/bin/freshet"]
CMD ["up"]
