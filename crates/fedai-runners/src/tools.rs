//! Function calling on any runner that constrains output to a JSON Schema.
//!
//! A job with `tools` is run as a chat whose system message lists the functions, with the
//! output constrained to `{"tool_calls": [{"name", "arguments"}, …]}` or `{"content": "…"}`
//! (llama.cpp's "generic" tool format): the model's own chat template needs no tool section,
//! and every runner with the `json_schema` feature serves tools the same way. [`answer`] turns
//! the constrained output into the [`JsonAnswer`] the result carries. Earlier turns' tool calls
//! are written into the conversation in the same JSON (the model reads them the way it is asked
//! to write them; in words for a text answer) and tool outputs as a user turn.
//!
//! Pure functions: the worker calls [`prepare`] before the runner and [`answer`] after it.

use fedai_protocol::{ChatMessage, FunctionCall, JobInput, JsonAnswer, ToolCall};
use serde_json::{json, Value};

use crate::{as_messages, InferRequest, RunnerError};

/// The most calls one answer may make when parallel calls are allowed.
pub const MAX_PARALLEL_CALLS: usize = 8;

/// How a tools job was set up, for reading its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// `tool_choice: none`: the model answers in text, run as a plain chat.
    Text,
    /// The output is the generic JSON form.
    Json,
}

/// Rewrite a job with `tools` into a schema-constrained chat; `None` for a job without tools
/// (left as it is).
pub fn prepare(req: &mut InferRequest) -> Result<Option<Plan>, RunnerError> {
    if req.params.tools.is_none() {
        return Ok(None);
    }
    let tools = req.params.tool_list();
    let choice = req.params.tool_choice.clone();
    let text = choice.as_deref() == Some("none");
    let mut messages = history(&as_messages(&req.input), !text);
    req.params.tools = None;
    req.params.tool_choice = None;
    if text {
        req.input = JobInput::Chat(messages);
        return Ok(Some(Plan::Text));
    }
    let forced: Option<String> = choice
        .as_deref()
        .and_then(|c| serde_json::from_str::<Value>(c).ok())
        .and_then(|v| v["function"]["name"].as_str().map(str::to_owned));
    let offered: Vec<&Value> = tools
        .iter()
        .filter(|t| forced.is_none() || t["function"]["name"].as_str() == forced.as_deref())
        .collect();
    let must_call = forced.is_some() || choice.as_deref() == Some("required");
    // Each function's own definitions (`$defs`, as Pydantic writes them) move to the root
    // under its name, since its schema now sits deeper.
    let mut defs = serde_json::Map::new();
    let items: Vec<Value> = offered.iter().map(|t| call_schema(t, &mut defs)).collect();
    // Small models repeat a call until the token limit: the list is bounded.
    let most = if req.params.parallel_tool_calls == Some(false) || forced.is_some() {
        1
    } else {
        MAX_PARALLEL_CALLS
    };
    let list = json!({"type": "array", "minItems": 1, "maxItems": most, "items": {"anyOf": items}});
    req.params.parallel_tool_calls = None;
    let calls = json!({
        "type": "object",
        "properties": {"tool_calls": list},
        "required": ["tool_calls"],
        "additionalProperties": false,
    });
    let mut schema = if must_call {
        calls
    } else {
        json!({"anyOf": [calls, {
            "type": "object",
            "properties": {"content": {"type": "string"}},
            "required": ["content"],
            "additionalProperties": false,
        }]})
    };
    if !defs.is_empty() {
        schema["$defs"] = Value::Object(defs);
    }
    let listed: Vec<String> = offered.iter().map(|t| t["function"].to_string()).collect();
    let how = if must_call {
        "Answer with one JSON object {\"tool_calls\": [{\"name\": <tool name>, \"arguments\": \
         <arguments object>}]} calling the tools the request needs."
    } else {
        "Answer with one JSON object: {\"tool_calls\": [{\"name\": <tool name>, \"arguments\": \
         <arguments object>}]} to call tools, or {\"content\": <your answer>} to answer the \
         user directly."
    };
    let guide = format!(
        "You can call these tools (each with a JSON Schema of its arguments):\n{}\n\n{how}",
        listed.join("\n")
    );
    match messages.first_mut() {
        Some(m) if m.role == "system" => m.content = format!("{}\n\n{guide}", m.content),
        _ => messages.insert(0, ChatMessage::new("system", guide)),
    }
    req.input = JobInput::Chat(messages);
    req.params.json_schema = Some(schema.to_string());
    Ok(Some(Plan::Json))
}

/// One call's schema: the function's name and its own parameter schema, whose definitions
/// go into `defs` as `<function>.<name>` (and its references with them).
fn call_schema(tool: &Value, defs: &mut serde_json::Map<String, Value>) -> Value {
    let f = &tool["function"];
    let name = f["name"].as_str().unwrap_or_default();
    let mut params = match &f["parameters"] {
        Value::Object(_) => f["parameters"].clone(),
        _ => json!({"type": "object"}),
    };
    if let Value::Object(p) = &mut params {
        for key in ["$defs", "definitions"] {
            if let Some(Value::Object(d)) = p.remove(key) {
                for (k, mut v) in d {
                    rewrite_refs(&mut v, name);
                    defs.insert(format!("{name}.{k}"), v);
                }
            }
        }
    }
    rewrite_refs(&mut params, name);
    json!({
        "type": "object",
        "properties": {"name": {"const": f["name"]}, "arguments": params},
        "required": ["name", "arguments"],
        "additionalProperties": false,
    })
}

/// `#/$defs/X` and `#/definitions/X` in a function's schema → `#/$defs/<function>.X`.
fn rewrite_refs(v: &mut Value, function: &str) {
    match v {
        Value::Object(o) => {
            if let Some(Value::String(r)) = o.get_mut("$ref") {
                let rest = r
                    .strip_prefix("#/$defs/")
                    .or_else(|| r.strip_prefix("#/definitions/"));
                if let Some(rest) = rest {
                    *r = format!("#/$defs/{function}.{rest}");
                }
            }
            o.values_mut().for_each(|v| rewrite_refs(v, function));
        }
        Value::Array(a) => a.iter_mut().for_each(|v| rewrite_refs(v, function)),
        _ => {}
    }
}

/// Earlier tool calls, in the JSON the model is asked to write (in words when it is to answer
/// in text: small models echo JSON they see), and tool outputs as a user turn in words.
fn history(messages: &[ChatMessage], json: bool) -> Vec<ChatMessage> {
    messages
        .iter()
        .map(|m| match m.role.as_str() {
            "assistant" if !m.tool_calls.is_empty() => {
                let calls: Vec<Value> = m
                    .tool_calls
                    .iter()
                    .map(|c| {
                        let args = serde_json::from_str::<Value>(&c.function.arguments)
                            .unwrap_or(Value::Null);
                        json!({"name": c.function.name, "arguments": args})
                    })
                    .collect();
                let said = if json {
                    json!({ "tool_calls": calls }).to_string()
                } else {
                    let each: Vec<String> = calls
                        .iter()
                        .map(|c| {
                            format!(
                                "{} with {}",
                                c["name"].as_str().unwrap_or_default(),
                                c["arguments"]
                            )
                        })
                        .collect();
                    format!("I called {}.", each.join(" and "))
                };
                ChatMessage::new("assistant", said)
            }
            "tool" => {
                let id = m.tool_call_id.clone().unwrap_or_default();
                let name = messages
                    .iter()
                    .flat_map(|a| &a.tool_calls)
                    .find(|c| c.id == id)
                    .map(|c| c.function.name.clone())
                    .unwrap_or_default();
                ChatMessage::new("user", format!("Result of {name}: {}", m.content))
            }
            _ => ChatMessage::new(m.role.clone(), m.content.clone()),
        })
        .collect()
}

/// The runner's output read as the job's [`JsonAnswer`]. Call ids are derived from the job's
/// input data and the output: a later turn's same call gets a new id, while the same job run
/// twice gives the same ids (spot checks compare answers byte for byte).
pub fn answer(plan: Plan, input_data: &str, output: &str) -> Result<JsonAnswer, RunnerError> {
    if plan == Plan::Text {
        return Ok(JsonAnswer {
            content: output.to_owned(),
            ..JsonAnswer::default()
        });
    }
    let bad = |m: &str| RunnerError::Protocol(format!("tool answer: {m}"));
    let v: Value = serde_json::from_str(output.trim()).map_err(|_| bad("not JSON"))?;
    if let Some(text) = v["content"].as_str() {
        return Ok(JsonAnswer {
            content: text.to_owned(),
            ..JsonAnswer::default()
        });
    }
    let calls = v["tool_calls"]
        .as_array()
        .filter(|c| !c.is_empty() && c.len() <= fedai_protocol::job::MAX_TOOL_CALLS)
        .ok_or_else(|| bad("neither content nor tool calls"))?;
    let digest = fedai_protocol::sha256_hex(format!("{input_data}\n{output}").as_bytes());
    // The same function with the same arguments twice in one answer is a model repeating
    // itself, not two calls an app should make.
    let mut distinct: Vec<&Value> = Vec::new();
    for c in calls {
        if !distinct.contains(&c) {
            distinct.push(c);
        }
    }
    let tool_calls = distinct
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let name = c["name"].as_str().filter(|n| !n.is_empty());
            match (name, &c["arguments"]) {
                (Some(name), args @ Value::Object(_)) => Ok(ToolCall {
                    id: format!("call_{}_{i}", &digest[..16]),
                    kind: "function".into(),
                    function: FunctionCall {
                        name: name.to_owned(),
                        arguments: args.to_string(),
                    },
                }),
                _ => Err(bad("a call without a name or an arguments object")),
            }
        })
        .collect::<Result<_, _>>()?;
    Ok(JsonAnswer {
        tool_calls,
        ..JsonAnswer::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedai_protocol::JobParams;

    const WEATHER: &str = r#"[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}},{"type":"function","function":{"name":"get_time"}}]"#;

    fn req(choice: Option<&str>) -> InferRequest {
        InferRequest {
            model: "m".into(),
            input: JobInput::Chat(vec![ChatMessage::new("user", "Weather in Paris?")]),
            params: JobParams {
                tools: Some(WEATHER.into()),
                tool_choice: choice.map(str::to_owned),
                ..JobParams::default()
            },
            max_tokens: 64,
        }
    }

    #[test]
    fn a_job_without_tools_is_left_alone() {
        let mut r = req(None);
        r.params.tools = None;
        let before = r.clone();
        assert_eq!(prepare(&mut r).unwrap(), None);
        assert_eq!(r, before);
    }

    #[test]
    fn auto_offers_calls_or_content_and_lists_the_tools() {
        let mut r = req(None);
        assert_eq!(prepare(&mut r).unwrap(), Some(Plan::Json));
        assert!(r.params.tools.is_none(), "the runner never sees tools");
        let schema: Value = serde_json::from_str(r.params.json_schema.as_deref().unwrap()).unwrap();
        assert_eq!(schema["anyOf"].as_array().unwrap().len(), 2);
        let items = &schema["anyOf"][0]["properties"]["tool_calls"]["items"]["anyOf"];
        assert_eq!(items[0]["properties"]["name"]["const"], "get_weather");
        assert_eq!(items[0]["properties"]["arguments"]["required"][0], "city");
        assert_eq!(items[1]["properties"]["arguments"]["type"], "object");
        let JobInput::Chat(m) = &r.input else {
            panic!("a chat")
        };
        assert_eq!(m[0].role, "system");
        assert!(m[0].content.contains("get_weather") && m[0].content.contains("get_time"));
        assert_eq!(m[1].content, "Weather in Paris?");
    }

    #[test]
    fn required_and_named_choices_force_a_call() {
        let mut r = req(Some("required"));
        prepare(&mut r).unwrap();
        let s: Value = serde_json::from_str(r.params.json_schema.as_deref().unwrap()).unwrap();
        assert_eq!(s["required"][0], "tool_calls", "no content branch");
        let mut r = req(Some(
            r#"{"type":"function","function":{"name":"get_time"}}"#,
        ));
        prepare(&mut r).unwrap();
        let s: Value = serde_json::from_str(r.params.json_schema.as_deref().unwrap()).unwrap();
        let items = s["properties"]["tool_calls"]["items"]["anyOf"]
            .as_array()
            .unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0]["properties"]["name"]["const"], "get_time");
        let mut r = req(Some("none"));
        assert_eq!(prepare(&mut r).unwrap(), Some(Plan::Text));
        assert!(r.params.json_schema.is_none());
        assert_eq!(answer(Plan::Text, "", "hi").unwrap().content, "hi");
    }

    #[test]
    fn answers_are_read_strictly_with_stable_ids() {
        let out = r#"{"tool_calls":[{"name":"get_weather","arguments":{"city":"Paris"}}]}"#;
        let a = answer(Plan::Json, "in", out).unwrap();
        assert_eq!(a.tool_calls.len(), 1);
        let twice = r#"{"tool_calls":[{"name":"get_weather","arguments":{"city":"Paris"}},{"name":"get_weather","arguments":{"city":"Paris"}},{"name":"get_weather","arguments":{"city":"Rome"}}]}"#;
        let d = answer(Plan::Json, "in", twice).unwrap();
        assert_eq!(d.tool_calls.len(), 2, "a repeated call is made once");
        assert_ne!(d.tool_calls[0].id, d.tool_calls[1].id);
        assert_eq!(a.tool_calls[0].function.name, "get_weather");
        assert_eq!(a.tool_calls[0].function.arguments, r#"{"city":"Paris"}"#);
        assert_eq!(
            answer(Plan::Json, "in", out).unwrap(),
            a,
            "same job, same ids"
        );
        assert_ne!(
            answer(Plan::Json, "a later turn", out).unwrap().tool_calls[0].id,
            a.tool_calls[0].id,
            "the same call in a later turn gets a new id"
        );
        assert_eq!(
            JsonAnswer::parse(&a.to_output()).unwrap(),
            a,
            "the result content reads back"
        );
        let text = answer(Plan::Json, "in", r#"{"content":"Sunny."}"#).unwrap();
        assert_eq!(
            (text.content.as_str(), text.tool_calls.len()),
            ("Sunny.", 0)
        );
        for bad in [
            "not json",
            "{}",
            r#"{"tool_calls":[]}"#,
            r#"{"tool_calls":[{"name":"x","arguments":"{}"}]}"#,
        ] {
            assert!(answer(Plan::Json, "in", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_instructions_stay_within_what_customers_allow_for() {
        let mut r = req(Some("required"));
        r.params.tools = Some(r#"[{"type":"function","function":{"name":"f"}}]"#.into());
        prepare(&mut r).unwrap();
        let JobInput::Chat(m) = &r.input else {
            panic!("a chat")
        };
        let listed = r#"{"name":"f"}"#.len();
        assert!(m[0].content.len() - listed <= fedai_protocol::job::TOOLS_GUIDE_BYTES);
        let mut r = req(None);
        prepare(&mut r).unwrap();
        let JobInput::Chat(m) = &r.input else {
            panic!("a chat")
        };
        assert!(m[0].content.len() <= WEATHER.len() + fedai_protocol::job::TOOLS_GUIDE_BYTES);
    }

    #[test]
    fn one_call_when_parallel_calls_are_off_and_definitions_move_to_the_root() {
        let mut r = req(None);
        r.params.parallel_tool_calls = Some(false);
        r.params.tools = Some(
            r##"[{"type":"function","function":{"name":"pick","parameters":{"type":"object","properties":{"c":{"$ref":"#/$defs/Colour"}},"$defs":{"Colour":{"enum":["red","blue"]},"Pair":{"type":"array","items":{"$ref":"#/$defs/Colour"}}}}}}]"##.into(),
        );
        prepare(&mut r).unwrap();
        let s: Value = serde_json::from_str(r.params.json_schema.as_deref().unwrap()).unwrap();
        let calls = &s["anyOf"][0]["properties"]["tool_calls"];
        assert_eq!(calls["maxItems"], 1);
        let mut r = req(None);
        prepare(&mut r).unwrap();
        let open: Value = serde_json::from_str(r.params.json_schema.as_deref().unwrap()).unwrap();
        assert_eq!(
            open["anyOf"][0]["properties"]["tool_calls"]["maxItems"],
            MAX_PARALLEL_CALLS
        );
        let args = &calls["items"]["anyOf"][0]["properties"]["arguments"];
        assert_eq!(args["properties"]["c"]["$ref"], "#/$defs/pick.Colour");
        assert!(args.get("$defs").is_none());
        assert_eq!(s["$defs"]["pick.Colour"]["enum"][0], "red");
        assert_eq!(
            s["$defs"]["pick.Pair"]["items"]["$ref"],
            "#/$defs/pick.Colour"
        );
    }

    #[test]
    fn earlier_calls_and_outputs_are_written_as_the_model_writes_them() {
        let call = ToolCall {
            id: "call_1".into(),
            kind: "function".into(),
            function: FunctionCall {
                name: "get_weather".into(),
                arguments: r#"{"city":"Paris"}"#.into(),
            },
        };
        let mut r = req(None);
        r.input = JobInput::Chat(vec![
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Weather in Paris?"),
            ChatMessage {
                tool_calls: vec![call],
                ..ChatMessage::new("assistant", "")
            },
            ChatMessage {
                tool_call_id: Some("call_1".into()),
                ..ChatMessage::new("tool", "18 C, sunny")
            },
        ]);
        let before = r.input.clone();
        prepare(&mut r).unwrap();
        let JobInput::Chat(m) = &r.input else {
            panic!("a chat")
        };
        assert!(
            m[0].content.starts_with("Be brief.\n\n"),
            "one system message"
        );
        assert_eq!(
            m[2].content,
            r#"{"tool_calls":[{"arguments":{"city":"Paris"},"name":"get_weather"}]}"#
        );
        assert_eq!(m[3].role, "user");
        assert_eq!(m[3].content, "Result of get_weather: 18 C, sunny");
        // Asked for text, the model reads its earlier call in words.
        r.params.tools = Some(WEATHER.into());
        r.params.tool_choice = Some("none".into());
        r.input = before;
        prepare(&mut r).unwrap();
        let JobInput::Chat(m) = &r.input else {
            panic!("a chat")
        };
        assert_eq!(
            m[2].content,
            r#"I called get_weather with {"city":"Paris"}."#
        );
    }
}
