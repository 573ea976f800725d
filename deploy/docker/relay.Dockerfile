# fedai-relay on a debootstrap'd Debian 12 (deploy/docker/build.sh). Events live on the volume
# /data; the relay listens on 7777 (WebSocket, NIP-11, the dashboard, /health, /metrics).
ARG BASE
FROM $BASE
COPY bin/fedai-relay /usr/local/bin/fedai-relay
RUN groupadd --system --gid 10001 fedai \
 && useradd --system --uid 10001 --gid 10001 --home-dir /data --shell /usr/sbin/nologin fedai \
 && mkdir -p /data && chown 10001:10001 /data
USER 10001:10001
ENV FEDAI_RELAY_BIND=0.0.0.0:7777 FEDAI_RELAY_DATA_DIR=/data
VOLUME /data
EXPOSE 7777
# No curl in the image: bash's /dev/tcp asks /health on the port the relay was told to use.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${FEDAI_RELAY_BIND##*:} && printf 'GET /health HTTP/1.0\\r\\n\\r\\n' >&3 && head -1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["/usr/local/bin/fedai-relay"]
