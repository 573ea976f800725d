# fedai-worker (and the fedai CLI) on a debootstrap'd Debian 12 (deploy/docker/build.sh).
# The key comes from a mounted secret file (FEDAI_NSEC_FILE, e.g. /run/secrets/worker_nsec),
# never from the image or a command line; metrics and /health on 9100.
ARG BASE
FROM $BASE
COPY bin/fedai-worker bin/fedai /usr/local/bin/
RUN groupadd --system --gid 10001 fedai \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin fedai
USER 10001:10001
ENV FEDAI_METRICS_BIND=0.0.0.0:9100 FEDAI_NSEC_FILE=/run/secrets/worker_nsec
EXPOSE 9100
# /health answers 200 when the worker and its runner are healthy, 503 otherwise.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${FEDAI_METRICS_BIND##*:} && printf 'GET /health HTTP/1.0\\r\\n\\r\\n' >&3 && head -1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["/usr/local/bin/fedai-worker"]
