//! JSON-RPC 2.0 messages: a request is checked member by member (each element of a batch on
//! its own, so one bad element never stops the others), and every response carries
//! `"jsonrpc": "2.0"`.

use crate::error::Error;
use serde::Serialize;
use serde_json::Value;

/// A checked request: a call (with an id, which may be null) or a notification (without).
#[derive(Debug, PartialEq)]
pub struct Request {
    pub method: String,
    /// An object or an array, when given.
    pub params: Option<Value>,
    /// None for a notification.
    pub id: Option<Value>,
}

#[derive(Debug, Serialize)]
pub struct ErrorObject {
    pub code: i64,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "lowercase")]
enum Outcome {
    Result(Value),
    Error(ErrorObject),
}

#[derive(Debug, Serialize)]
pub struct Response {
    jsonrpc: &'static str,
    #[serde(flatten)]
    outcome: Outcome,
    id: Value,
}

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;

impl Response {
    pub fn result(id: Value, result: Value) -> Response {
        Response { jsonrpc: "2.0", outcome: Outcome::Result(result), id }
    }

    pub fn error(id: Value, code: i64, message: impl Into<String>) -> Response {
        Response::failure(id, Error::new(code, message))
    }

    pub fn failure(id: Value, e: Error) -> Response {
        let e = ErrorObject { code: e.code, message: e.message, data: e.data };
        Response { jsonrpc: "2.0", outcome: Outcome::Error(e), id }
    }
}

const SHAPE: &str =
    "a request is {\"jsonrpc\": \"2.0\", \"method\": \"...\", \"params\"?: {...}, \"id\"?: a string or number}";

/// Checks one request object. An invalid one gets -32600 with its id when the id itself is
/// valid, else with null.
pub fn parse_request(v: Value) -> Result<Request, Response> {
    let Value::Object(mut m) = v else {
        return Err(invalid(Value::Null, format!("{} is not an object", kind(&v))));
    };
    let id = match m.remove("id") {
        None => None,
        Some(id @ (Value::String(_) | Value::Number(_) | Value::Null)) => Some(id),
        Some(other) => return Err(invalid(Value::Null, format!("\"id\" is {}, not a string or number", kind(&other)))),
    };
    let reply_id = id.clone().unwrap_or(Value::Null);
    match m.remove("jsonrpc") {
        Some(Value::String(s)) if s == "2.0" => {}
        Some(other) => return Err(invalid(reply_id, format!("\"jsonrpc\" is {other}, not \"2.0\""))),
        None => return Err(invalid(reply_id, "\"jsonrpc\": \"2.0\" is missing".into())),
    }
    let method = match m.remove("method") {
        Some(Value::String(s)) => s,
        Some(other) => return Err(invalid(reply_id, format!("\"method\" is {}, not a string", kind(&other)))),
        None => return Err(invalid(reply_id, "\"method\" is missing".into())),
    };
    let params = match m.remove("params") {
        // null as none: what a client sends for "no params" (the Packer plugin does).
        None | Some(Value::Null) => None,
        Some(p @ (Value::Object(_) | Value::Array(_))) => Some(p),
        Some(other) => {
            return Err(invalid(reply_id, format!("\"params\" is {}, not an object or an array", kind(&other))))
        }
    };
    if let Some(k) = m.keys().next() {
        return Err(invalid(reply_id, format!("unknown member {k:?}")));
    }
    Ok(Request { method, params, id })
}

fn invalid(id: Value, what: String) -> Response {
    Response::error(id, INVALID_REQUEST, format!("Invalid request: {what} ({SHAPE})"))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(v: Value) -> Value {
        serde_json::to_value(parse_request(v).unwrap_err()).unwrap()
    }

    #[test]
    fn requests() {
        let r = parse_request(json!({"jsonrpc": "2.0", "id": 3, "method": "m", "params": {"a": 1}})).unwrap();
        assert_eq!(r, Request { method: "m".into(), params: Some(json!({"a": 1})), id: Some(json!(3)) });
        let n = parse_request(json!({"jsonrpc": "2.0", "method": "m"})).unwrap();
        assert_eq!(n.id, None);
        assert_eq!(parse_request(json!({"jsonrpc": "2.0", "method": "m", "id": null})).unwrap().id, Some(Value::Null));
        assert_eq!(parse_request(json!({"jsonrpc": "2.0", "method": "m", "params": null})).unwrap().params, None);
    }

    #[test]
    fn invalid_requests_keep_a_valid_id() {
        let e = err(json!({"id": 1, "method": "m"}));
        assert_eq!((&e["jsonrpc"], &e["id"], &e["error"]["code"]), (&json!("2.0"), &json!(1), &json!(-32600)));
        assert!(e["error"]["message"].as_str().unwrap().contains("\"jsonrpc\": \"2.0\" is missing"));
        assert_eq!(err(json!({"jsonrpc": "2.0", "id": [1], "method": "m"}))["id"], Value::Null);
        assert_eq!(err(json!(7))["id"], Value::Null);
        for bad in [
            json!({"jsonrpc": "1.0", "id": 1, "method": "m"}),
            json!({"jsonrpc": "2.0", "id": 1}),
            json!({"jsonrpc": "2.0", "id": 1, "method": "m", "params": "x"}),
            json!({"jsonrpc": "2.0", "id": 1, "method": "m", "parms": {}}),
        ] {
            assert_eq!(err(bad)["error"]["code"], -32600);
        }
    }

    #[test]
    fn responses_serialise_in_order() {
        let r = serde_json::to_string(&Response::result(json!("a"), Value::Null)).unwrap();
        assert_eq!(r, r#"{"jsonrpc":"2.0","result":null,"id":"a"}"#);
        let e = Response::failure(json!(1), Error::new(-32001, "gone").with_data(json!({"x": 1})));
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"jsonrpc":"2.0","error":{"code":-32001,"message":"gone","data":{"x":1}},"id":1}"#
        );
    }
}
