# syntax=docker/dockerfile:1
# The iotgate image. The build stage runs scripts/build-static.sh, the same script CI runs
# (followed by scripts/container-smoke.sh on its output); the image is distroless, non-root.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN scripts/build-static.sh /out

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/iotgate /usr/local/bin/iotgate
COPY --from=build /out/etc/iotgate /etc/iotgate
COPY --from=build --chown=nonroot:nonroot /out/var/lib/iotgate /var/lib/iotgate
USER nonroot:nonroot
EXPOSE 8080 9090
VOLUME /var/lib/iotgate
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/iotgate", "probe", "http://127.0.0.1:9090/healthz"]
ENTRYPOINT ["/usr/local/bin/iotgate", "--log-format", "json"]
CMD ["serve", "--config", "/etc/iotgate/thinger/iotgate.toml"]
