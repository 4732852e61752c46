# Multi-stage build of the sonde binary.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p sonde && cp target/release/sonde /usr/local/bin/sonde

FROM debian:bookworm-slim
RUN useradd --system --home /var/lib/sonde sonde && mkdir -p /var/lib/sonde && chown sonde /var/lib/sonde
COPY --from=build /usr/local/bin/sonde /usr/local/bin/sonde
USER sonde
VOLUME /var/lib/sonde
# Inside a container Sonde listens on all interfaces (the loopback default is for
# bare-metal runs); the compose network or port mapping decides who can reach it.
ENV SONDE_DATA_DIR=/var/lib/sonde \
    SONDE_GRPC_ADDR=0.0.0.0:4317 \
    SONDE_HTTP_ADDR=0.0.0.0:4318
EXPOSE 4317 4318
ENTRYPOINT ["sonde"]
CMD ["serve"]
