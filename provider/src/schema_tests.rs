//! The method table, `api-schema.json` and the examples of `API.md` agree.

use crate::rpc;
use serde_json::Value;

const SCHEMA: &str = include_str!("../api-schema.json");
const API_MD: &str = include_str!("../API.md");

/// A small JSON Schema check: type, const, enum, required, properties, additionalProperties
/// (false), items, minLength, minimum, allOf and local `$ref`s; boolean schemas.
pub fn validate(root: &Value, schema: &Value, v: &Value, path: &str) -> Result<(), String> {
    if let Some(b) = schema.as_bool() {
        return if b { Ok(()) } else { Err(format!("{path}: not allowed")) };
    }
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let target = root.pointer(r.trim_start_matches('#')).ok_or(format!("bad $ref {r}"))?;
        validate(root, target, v, path)?;
    }
    for s in schema.get("allOf").and_then(Value::as_array).into_iter().flatten() {
        validate(root, s, v, path)?;
    }
    if let Some(t) = schema.get("type") {
        let types: Vec<&str> = match t {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let ok = types.iter().any(|t| match *t {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            "null" => v.is_null(),
            _ => false,
        });
        if !ok {
            return Err(format!("{path}: {v} is not of type {t}"));
        }
    }
    if let Some(c) = schema.get("const") {
        if c != v {
            return Err(format!("{path}: {v} is not {c}"));
        }
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            return Err(format!("{path}: {v} is not one of {e:?}"));
        }
    }
    if let (Some(min), Some(s)) = (schema.get("minLength").and_then(Value::as_u64), v.as_str()) {
        if (s.chars().count() as u64) < min {
            return Err(format!("{path}: too short"));
        }
    }
    if let (Some(min), Some(n)) = (schema.get("minimum").and_then(Value::as_f64), v.as_f64()) {
        if n < min {
            return Err(format!("{path}: {n} < {min}"));
        }
    }
    if let Some(obj) = v.as_object() {
        for r in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
            let r = r.as_str().unwrap_or_default();
            if !obj.contains_key(r) {
                return Err(format!("{path}: missing {r}"));
            }
        }
        let props = schema.get("properties").and_then(Value::as_object);
        for (k, val) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(s) => validate(root, s, val, &format!("{path}.{k}"))?,
                None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    return Err(format!("{path}: unexpected field {k}"))
                }
                None => {}
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array()) {
        for (i, x) in arr.iter().enumerate() {
            validate(root, items, x, &format!("{path}[{i}]"))?;
        }
    }
    Ok(())
}

fn schema() -> Value {
    serde_json::from_str(SCHEMA).expect("api-schema.json is JSON")
}

/// The ```json blocks of API.md.
fn examples() -> Vec<Value> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in API_MD.lines() {
        match (&mut cur, line.trim()) {
            (None, "```json") => cur = Some(String::new()),
            (Some(s), "```") => {
                out.push(serde_json::from_str(s).unwrap_or_else(|e| panic!("API.md example {s}: {e}")));
                cur = None;
            }
            (Some(s), l) => {
                s.push_str(l);
                s.push('\n');
            }
            _ => {}
        }
    }
    out
}

#[test]
fn method_table_matches_schema() {
    let s = schema();
    let mut in_schema: Vec<&str> = s["methods"].as_object().unwrap().keys().map(String::as_str).collect();
    let mut in_code = rpc::method_names();
    in_schema.sort();
    in_code.sort();
    assert_eq!(in_code, in_schema, "methods registered vs methods in api-schema.json");
}

#[test]
fn api_md_examples_validate() {
    let s = schema();
    let mut last: Option<(String, Value, Value)> = None;
    let mut documented = std::collections::BTreeSet::new();
    let mut checked = 0;
    for ex in examples() {
        assert_eq!(ex["jsonrpc"], "2.0", "{ex}");
        let method = ex.get("method").and_then(Value::as_str);
        match (method, ex.get("id")) {
            (Some(m), Some(_)) => {
                let spec = s["methods"].get(m).unwrap_or_else(|| panic!("API.md calls unknown method {m}"));
                documented.insert(m.to_string());
                // Validated when its response comes: an example of a params error is not.
                last = Some((m.to_string(), spec["params"].clone(), ex.clone()));
            }
            (Some(m), None) => {
                let spec = &s["notifications"][m]["params"];
                assert!(!spec.is_null(), "API.md shows unknown notification {m}");
                validate(&s, spec, &ex["params"], m).unwrap_or_else(|e| panic!("{ex}: {e}"));
                checked += 1;
            }
            (None, _) => {
                let (m, params_schema, request) = last.clone().expect("a response follows a request");
                assert_eq!(request["id"], ex["id"], "response {ex} follows its request");
                let params = request.get("params").cloned().unwrap_or(serde_json::json!({}));
                let params_error = ex["error"]["code"] == -32602;
                let r = validate(&s, &params_schema, &params, &format!("{m} params"));
                assert_eq!(r.is_err(), params_error, "{request}: {r:?}");
                if let Some(result) = ex.get("result") {
                    validate(&s, &s["methods"][&m]["result"], result, &format!("{m} result"))
                        .unwrap_or_else(|e| panic!("{ex}: {e}"));
                } else {
                    assert!(ex["error"]["code"].is_i64() && ex["error"]["message"].is_string(), "{ex}");
                }
                checked += 1;
            }
        }
    }
    let all: std::collections::BTreeSet<String> = rpc::method_names().iter().map(|m| m.to_string()).collect();
    assert_eq!(documented, all, "every method has an example request in API.md");
    assert!(checked >= 8);
}

#[test]
fn validator_refuses() {
    let s = schema();
    let add = &s["methods"]["box.add"]["params"];
    assert!(validate(&s, add, &serde_json::json!({"source": "/x"}), "p").is_ok());
    assert!(validate(&s, add, &serde_json::json!({}), "p").is_err());
    assert!(validate(&s, add, &serde_json::json!({"source": "/x", "nmae": 1}), "p").is_err());
    assert!(validate(&s, add, &serde_json::json!({"source": "/x", "checksum_type": "crc"}), "p").is_err());
    let list = &s["methods"]["box.list"]["result"];
    assert!(validate(&s, list, &serde_json::json!([{"name": "a"}]), "r").is_err());
}
