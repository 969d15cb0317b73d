# cilia control-plane image: `cilia serve --kubernetes` (and `cilia bootstrap` for init steps).
# Envoy is not in this image; proxies run the envoyproxy/envoy image (deploy/node-envoy.yaml).
FROM python:3.12-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml ./
COPY src ./src
# grpcio, xds-protos and the rest come as manylinux wheels: no compiler needed.
RUN pip install --no-cache-dir --no-compile --prefix=/install .

FROM python:3.12-slim-bookworm
LABEL org.opencontainers.image.title="cilia" \
      org.opencontainers.image.description="Envoy xDS control plane for a sidecar-less or sidecar service mesh"
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY --from=build /install /usr/local
# Unprivileged, no login shell, no home: the image only runs cilia.
USER 65532:65532
EXPOSE 18000 19000 9443
ENTRYPOINT ["cilia"]
CMD ["serve", "--kubernetes", "--xds=0.0.0.0:18000", "--admin=0.0.0.0:19000"]
