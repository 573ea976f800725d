#!/usr/bin/env python3
"""fed_AI runner launcher (adapted from ../shared/reference): `llama-server` stand-in: run llama.cpp's native C++ HTTP server, embedded in
the prebuilt PyPI wheel `xllamacpp` (pip install xllamacpp), as a process.

Accepts the common llama-server flags so a worker can spawn it like the real
binary:
  serve_xllamacpp.py -m MODEL.gguf [--host 127.0.0.1] [--port 8080]
                     [-c|--ctx-size 2048] [-t|--threads 2] [-np|--parallel 1]
                     [-a|--alias NAME] [-n|--n-predict N] [--poll 0..100]
(a bare positional MODEL also works). Unknown flags are ignored with a warning.
Serves /health /completion /v1/completions /v1/chat/completions /v1/models ...
Exits on SIGTERM/SIGINT.
"""
import argparse
import signal
import sys
import threading

import xllamacpp as xlc


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model_pos", nargs="?")
    ap.add_argument("-m", "--model")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("-c", "--ctx-size", "--ctx", dest="ctx", type=int, default=2048)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-np", "--parallel", type=int, default=1)
    ap.add_argument("-a", "--alias", default=None)
    ap.add_argument("-n", "--n-predict", dest="n_predict", type=int, default=-1)
    # llama.cpp's threads poll for work (busy-wait) at level 50 by default: on a machine that
    # shares its cores with the relay and the worker (the demo, the tests) that spinning delays
    # them by milliseconds. 0 sleeps instead; a dedicated inference box may want 50.
    ap.add_argument("--poll", type=int, default=0)
    # `--embeddings`: serve /v1/embeddings (llama.cpp then serves embeddings only), pooled as
    # `--pooling` says (a chat model has no pooling of its own: mean makes it an embedder).
    ap.add_argument("--embeddings", "--embedding", dest="embeddings", action="store_true")
    ap.add_argument("--pooling", choices=["none", "mean", "cls", "last", "rank"], default=None)
    a, unknown = ap.parse_known_args()
    if unknown:
        print(f"warning: ignoring flags {unknown}", file=sys.stderr)
    model = a.model or a.model_pos
    if not model:
        ap.error("no model (-m MODEL.gguf)")

    p = xlc.CommonParams()
    p.model.path = model
    p.hostnames = [a.host]
    p.port = a.port
    p.n_ctx = a.ctx
    p.n_parallel = a.parallel
    p.n_predict = a.n_predict
    p.cpuparams.n_threads = a.threads
    p.cpuparams_batch.n_threads = a.threads
    p.cpuparams.poll = a.poll
    p.cpuparams_batch.poll = a.poll
    p.offline = True          # never touch the network for models
    p.ui = False              # no web UI
    p.endpoint_metrics = True
    if a.embeddings:
        p.embedding = True
        pooling = a.pooling or "mean"
        p.pooling_type = getattr(xlc.llama_pooling_type, "LLAMA_POOLING_TYPE_" + pooling.upper())
    if a.alias:
        p.model_alias = {a.alias}

    server = xlc.Server(p)  # loads the model, starts the HTTP listener thread
    print(f"listening on {server.listening_address}", flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    del server
    return 0


if __name__ == "__main__":
    sys.exit(main())
