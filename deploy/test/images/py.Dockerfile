# The Python stand-ins (Debian's python3 and python3-grpcio, nothing from
# PyPI): otlp_receiver.py for Jaeger, grafana_standin.py for Grafana.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-grpcio \
    && rm -rf /var/lib/apt/lists/*
COPY jsonhttp.py otlp_receiver.py grafana_standin.py /opt/standins/
USER 65534:65534
ENV PYTHONUNBUFFERED=1
CMD ["python3", "/opt/standins/otlp_receiver.py"]
