# llama.cpp's own HTTP server (from the xllamacpp wheel, as workers/runner/setup.sh installs it)
# with SmolLM2-135M-Instruct and the tiny test model, on a debootstrap'd Debian 12 with Python.
# The wheels were fetched from PyPI by deploy/docker/build.sh: no network inside the build.
# Settings: MODEL, ALIAS, THREADS, PARALLEL, PORT (llama.cpp's own, not fed_AI's FEDAI_*).
ARG BASE
FROM $BASE
COPY wheels /tmp/wheels
RUN python3 -m venv /opt/runner \
 && /opt/runner/bin/pip install -q --no-index --find-links /tmp/wheels xllamacpp \
 && rm -rf /tmp/wheels /root/.cache \
 && groupadd --system --gid 10001 fedai \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin fedai
COPY models /models
COPY serve_llamacpp.py /opt/runner/serve_llamacpp.py
USER 10001:10001
EXPOSE 8080
ENV MODEL=/models/SmolLM2-135M-Instruct.Q4_1.gguf ALIAS=smollm2-135m-instruct THREADS=1 PARALLEL=2 \
    HOST=0.0.0.0 PORT=8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["bash", "-c", "/opt/runner/bin/python -c \"import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=2)\""]
ENTRYPOINT ["bash", "-c", "exec /opt/runner/bin/python /opt/runner/serve_llamacpp.py -m \"$MODEL\" -a \"$ALIAS\" --host \"$HOST\" --port \"$PORT\" -t \"$THREADS\" -np \"$PARALLEL\" \"$@\"", "--"]
