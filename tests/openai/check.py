"""The official `openai` Python SDK against `fedai gateway` (driven by tests/gateway.rs).

Usage: check.py BASE_URL SCENARIO...
Each scenario prints one JSON line {"scenario": name, ...facts}; an assertion that fails exits
non-zero with the reason. The Rust test checks what the SDK cannot see (the relay, the worker).
"""
import json
import os
import sys
import threading
import time

import openai

BASE = sys.argv[1]
client = openai.OpenAI(base_url=BASE, api_key="unused-on-loopback", max_retries=0, timeout=120)
CHAT = [
    {"role": "system", "content": "You answer in one short sentence."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Name another one."},
]


def out(name, **facts):
    print(json.dumps({"scenario": name, **facts}), flush=True)


def models():
    listed = client.models.list()
    ids = [m.id for m in listed.data]
    assert "smol" in ids, ids
    smol = next(m for m in listed.data if m.id == "smol")
    assert smol.object == "model" and smol.owned_by == "fedai"
    extra = smol.model_extra["fedai"]
    assert extra["workers"] >= 1 and "json_schema" in extra["features"], extra
    assert "tools" in extra["features"] and "logprobs" in extra["features"], extra
    assert client.models.retrieve("smol").id == "smol"
    out("models", ids=ids, workers=extra["workers"])


def chat():
    raw = client.chat.completions.with_raw_response.create(
        model="smol", messages=CHAT, max_tokens=16, temperature=0, seed=1
    )
    c = raw.parse()
    text = c.choices[0].message.content
    assert text, c
    assert c.object == "chat.completion" and c.choices[0].finish_reason in ("stop", "length")
    assert c.usage.prompt_tokens > 0 and c.usage.completion_tokens > 0, c.usage
    assert c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens
    fedai = c.model_extra["fedai"]
    assert raw.headers["x-fedai-metering"] == fedai["metering"]
    assert raw.headers["x-fedai-worker"].startswith("npub1")
    out("chat", text=text, usage=c.usage.model_dump(), fedai=fedai)


def stream():
    s = client.chat.completions.create(
        model="smol", messages=CHAT, max_tokens=16, temperature=0, seed=1,
        stream=True, stream_options={"include_usage": True},
    )
    text, finish, usage, fedai, chunks = "", None, None, None, 0
    for ch in s:
        chunks += 1
        if ch.usage is not None:
            usage = ch.usage
        for choice in ch.choices:
            text += choice.delta.content or ""
            if choice.finish_reason:
                finish = choice.finish_reason
                fedai = ch.model_extra.get("fedai")
    assert finish in ("stop", "length") and text and usage and fedai, (finish, text, usage)
    assert usage.completion_tokens > 0
    out("stream", text=text, chunks=chunks, usage=usage.model_dump(), fedai=fedai)


def completion():
    c = client.completions.create(model="smol", prompt="The sky is", max_tokens=6, temperature=0)
    assert c.object == "text_completion" and c.choices[0].text, c
    n = client.completions.create(model="smol", prompt="Once upon a time", max_tokens=4, n=2)
    assert [ch.index for ch in n.choices] == [0, 1], n
    out("completion", text=c.choices[0].text, n=len(n.choices))


def json_schema():
    schema = {
        "type": "object",
        "properties": {"colour": {"type": "string", "maxLength": 12}},
        "required": ["colour"],
        "additionalProperties": False,
    }
    c = client.chat.completions.create(
        model="smol",
        messages=[{"role": "user", "content": "Give a colour as JSON."}],
        max_tokens=40,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
    )
    value = json.loads(c.choices[0].message.content)
    assert isinstance(value["colour"], str), value
    out("json_schema", value=value)


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


def tools():
    """A tool call round trip: the model calls the function, the app answers it, the model
    answers the user; then the same call streamed."""
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    c = client.chat.completions.create(
        model="smol", messages=ask, tools=[WEATHER], tool_choice="required",
        parallel_tool_calls=False, max_tokens=48, temperature=0, seed=1,
    )
    choice = c.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather", call
    args = json.loads(call.function.arguments)
    assert isinstance(args["city"], str), args
    assert c.usage.completion_tokens > 0 and c.model_extra["fedai"]["metering"], c
    turns = ask + [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "18 C and sunny"},
    ]
    answer = client.chat.completions.create(
        model="smol", messages=turns, tools=[WEATHER], tool_choice="none",
        max_tokens=24, temperature=0, seed=1,
    )
    assert answer.choices[0].message.content and not answer.choices[0].message.tool_calls
    s = client.chat.completions.create(
        model="smol", messages=ask, tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=48, temperature=0, seed=1, stream=True,
    )
    streamed, finish = {}, None
    for ch in s:
        for ck in ch.choices:
            for d in ck.delta.tool_calls or []:
                t = streamed.setdefault(d.index, {"name": "", "arguments": ""})
                t["name"] += d.function.name or ""
                t["arguments"] += d.function.arguments or ""
            finish = ck.finish_reason or finish
    # OpenAI ends a call of the function the app named with "stop".
    assert finish == "stop" and streamed[0]["name"] == "get_weather", (finish, streamed)
    json.loads(streamed[0]["arguments"])
    out("tools", call=call.function.arguments, fedai=c.model_extra["fedai"],
        answer=answer.choices[0].message.content, streamed=streamed[0]["arguments"])


def logprobs():
    """Each token's log probability, whole and streamed: the tokens make the signed text."""
    c = client.chat.completions.create(
        model="smol", messages=CHAT, max_tokens=8, temperature=0, seed=1,
        logprobs=True, top_logprobs=2,
    )
    choice = c.choices[0]
    tokens = choice.logprobs.content
    assert tokens and "".join(t.token for t in tokens) == choice.message.content, choice
    assert all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in tokens), tokens
    assert bytes(tokens[0].bytes) == tokens[0].token.encode()
    s = client.chat.completions.create(
        model="smol", messages=CHAT, max_tokens=8, temperature=0, seed=1,
        logprobs=True, stream=True,
    )
    text, streamed = "", []
    for ch in s:
        for ck in ch.choices:
            text += ck.delta.content or ""
            if ck.logprobs and ck.logprobs.content:
                streamed += ck.logprobs.content
    assert streamed and "".join(t.token for t in streamed) == text, (text, streamed)
    out("logprobs", tokens=len(tokens), text=choice.message.content)


def embeddings():
    texts = ["The cat sat on the mat.", "A kitten sat on a rug.", "Quarterly revenue grew five percent."]
    listed = {m.id: m for m in client.models.list().data}
    assert listed["smol-embed"].model_extra["fedai"]["job_kinds"] == [5060], listed["smol-embed"]
    # The SDK asks for base64 by default and decodes it.
    raw = client.embeddings.with_raw_response.create(model="smol-embed", input=texts)
    e = raw.parse()
    assert e.object == "list" and [d.index for d in e.data] == [0, 1, 2], e
    dims = len(e.data[0].embedding)
    assert dims == 576 and all(len(d.embedding) == dims for d in e.data), dims
    assert e.usage.prompt_tokens > 0 and e.usage.total_tokens == e.usage.prompt_tokens, e.usage
    fedai = e.model_extra["fedai"]
    assert raw.headers["x-fedai-metering"] == fedai["metering"]
    assert e.data[0].embedding != e.data[2].embedding
    # As numbers: the same vector.
    f = client.embeddings.create(model="smol-embed", input=texts[0], encoding_format="float")
    assert len(f.data) == 1
    assert max(abs(a - b) for a, b in zip(f.data[0].embedding, e.data[0].embedding)) < 1e-6
    # A batch over one job's 64 texts goes as several jobs, answered in order.
    many = [f"note number {i}" for i in range(150)]
    m = client.embeddings.create(model="smol-embed", input=many)
    assert [d.index for d in m.data] == list(range(150)), len(m.data)
    assert isinstance(m.model_extra["fedai"], list) and len(m.model_extra["fedai"]) == 3
    for bad, param in [
        (dict(model="smol-embed", input=texts, dimensions=64), "dimensions"),
        (dict(model="smol-embed", input=[[1, 2, 3]]), "input"),
        (dict(model="smol-embed", input=""), "input"),
        (dict(model="smol", input="x"), "model"),
    ]:
        try:
            client.embeddings.create(**bad)
            raise AssertionError(f"{bad} must be refused")
        except openai.BadRequestError as err:
            assert err.body["param"] == param, (bad, err.body)
    try:
        client.chat.completions.create(model="smol-embed", messages=CHAT)
        raise AssertionError("chat with an embedding model must be refused")
    except openai.BadRequestError as err:
        assert "embeddings" in err.body["message"], err.body
    out("embeddings", dims=dims, fedai=fedai, head=e.data[0].embedding[:4])


def errors():
    try:
        client.chat.completions.create(model="no-such-model", messages=CHAT)
        raise AssertionError("an unknown model must fail")
    except openai.NotFoundError as e:
        assert e.status_code == 404 and e.body["code"] == "model_not_found", e.body
    custom = {"type": "custom", "custom": {"name": "now"}}
    try:
        client.chat.completions.create(model="smol", messages=CHAT, tools=[custom])
        raise AssertionError("custom tools must not be dropped silently")
    except openai.BadRequestError as e:
        assert e.body["param"] == "tools", e.body
    try:
        client.chat.completions.create(model="smol", messages=CHAT, logit_bias={"1": 5})
        raise AssertionError("logit_bias must not be dropped silently")
    except openai.BadRequestError as e:
        assert e.body["param"] == "logit_bias", e.body
    try:
        client.chat.completions.create(model="smol", messages=CHAT, temperature=9)
        raise AssertionError("a bad temperature is refused")
    except openai.BadRequestError:
        pass
    out("errors")


def concurrent():
    results, errors = [], []

    def one(i):
        try:
            r = client.chat.completions.create(
                model="smol",
                messages=[{"role": "user", "content": f"Count to {i}."}],
                max_tokens=6,
            )
            results.append(r.model_extra["fedai"]["request"])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(results) == 16 and len(set(results)) == 16, results
    out("concurrent", answered=len(results), seconds=round(time.time() - t0, 2))


def disconnect():
    """A long raw completion, streamed; the app goes away after a few chunks."""
    raw = client.completions.with_raw_response.create(
        model="smol",
        prompt="Once upon a time, in a lighthouse by the sea, there lived an old keeper who",
        max_tokens=1500,
        temperature=0,
        stream=True,
    )
    request = raw.headers["x-fedai-request"]
    s = raw.parse()
    got = 0
    for _ in s:
        got += 1
        if got >= 4:
            break
    s.close()
    out("disconnect", request=request, chunks=got, closed_at=time.time())


def budget():
    """Paid requests until the budget runs out: then 402 with OpenAI's shape."""
    model = os.environ.get("FEDAI_MODEL", "smol")
    paid = []
    try:
        for _ in range(20):
            c = client.completions.create(model=model, prompt="Pay me", max_tokens=4, temperature=0)
            paid.append(c.model_extra["fedai"]["paid_msat"])
        raise AssertionError("the budget must run out")
    except openai.APIStatusError as e:
        assert e.status_code == 402, (e.status_code, e.body)
        assert e.body["code"] == "payment_required", e.body
        message = e.body["message"]
    assert paid and all(p > 0 for p in paid), paid
    out("budget", paid=paid, message=message)


def spent():
    """A gateway whose budget is spent answers 402 at once."""
    model = os.environ.get("FEDAI_MODEL", "smol")
    try:
        client.completions.create(model=model, prompt="Pay me", max_tokens=4)
        raise AssertionError("a spent budget must refuse")
    except openai.APIStatusError as e:
        assert e.status_code == 402, (e.status_code, e.body)
    out("spent")


for name in sys.argv[2:]:
    globals()[name]()
