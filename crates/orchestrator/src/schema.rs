//! The JSON Schema subset a template's `input_schema` may use, checked at
//! registration and applied to every CreateTask's context.
//!
//! Supported: `type` (one or a list), `properties`, `required`,
//! `additionalProperties` (bool or schema), `items`, `enum`, `const`,
//! `minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum`,
//! `minLength`, `maxLength`, `minItems`, `maxItems`, and the annotations
//! `$schema`, `$id`, `title`, `description`, `default`, `examples`. A schema
//! using any other keyword is refused at registration rather than half
//! applied. Keys a schema does not name are accepted unless
//! `additionalProperties` forbids them. (A full validator crate was left out
//! to keep the build lean; this covers what input contracts use.)

use serde_json::Value;

const KEYWORDS: [&str; 21] = [
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "const",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "$schema",
    "$id",
    "title",
    "description",
    "default",
    "examples",
];

const TYPES: [&str; 7] = ["object", "array", "string", "number", "integer", "boolean", "null"];

/// Where a value or schema is wrong: a JSON path (`context.order.id`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub path: String,
    pub reason: String,
}

fn violation(path: &str, reason: impl Into<String>) -> Violation {
    Violation {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// Checks that `schema` only uses the supported keywords, well formed.
pub fn check_schema(schema: &Value, path: &str) -> Result<(), Violation> {
    let map = match schema {
        Value::Bool(_) => return Ok(()),
        Value::Object(map) => map,
        _ => return Err(violation(path, "a schema is an object or a boolean")),
    };
    for (key, value) in map {
        let at = format!("{path}.{key}");
        if !KEYWORDS.contains(&key.as_str()) {
            return Err(violation(&at, "unsupported JSON Schema keyword"));
        }
        match key.as_str() {
            "type" => {
                let names: Vec<&Value> = match value {
                    Value::Array(list) => list.iter().collect(),
                    one => vec![one],
                };
                for name in names {
                    if !name.as_str().is_some_and(|n| TYPES.contains(&n)) {
                        return Err(violation(&at, format!("unknown type {name}")));
                    }
                }
            }
            "properties" => {
                let Value::Object(props) = value else {
                    return Err(violation(&at, "must be an object of schemas"));
                };
                for (name, sub) in props {
                    check_schema(sub, &format!("{at}.{name}"))?;
                }
            }
            "additionalProperties" | "items" => check_schema(value, &at)?,
            "required" if !value.as_array().is_some_and(|l| l.iter().all(Value::is_string)) => {
                return Err(violation(&at, "must be a list of property names"));
            }
            "enum" if !value.is_array() => return Err(violation(&at, "must be a list")),
            "minimum" | "maximum" | "exclusiveMinimum" | "exclusiveMaximum" if !value.is_number() => {
                return Err(violation(&at, "must be a number"));
            }
            "minLength" | "maxLength" | "minItems" | "maxItems" if !value.is_u64() => {
                return Err(violation(&at, "must be a non-negative integer"));
            }
            _ => {}
        }
    }
    Ok(())
}

fn type_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn has_type(value: &Value, name: &str) -> bool {
    match name {
        "integer" => value.as_f64().is_some_and(|n| n.fract() == 0.0),
        other => type_of(value) == other,
    }
}

/// Validates `value` (found at `path`) against a schema [`check_schema`]
/// accepted; the first violation found.
pub fn validate(schema: &Value, value: &Value, path: &str) -> Result<(), Violation> {
    let map = match schema {
        Value::Bool(true) => return Ok(()),
        Value::Bool(false) => return Err(violation(path, "is not allowed")),
        Value::Object(map) => map,
        _ => return Ok(()),
    };
    if let Some(kind) = map.get("type") {
        let names: Vec<&str> = match kind {
            Value::Array(list) => list.iter().filter_map(Value::as_str).collect(),
            one => one.as_str().into_iter().collect(),
        };
        if !names.iter().any(|n| has_type(value, n)) {
            return Err(violation(
                path,
                format!("must be of type {}, not {}", names.join(" or "), type_of(value)),
            ));
        }
    }
    if let Some(Value::Array(options)) = map.get("enum")
        && !options.contains(value)
    {
        return Err(violation(path, "is not one of the allowed values"));
    }
    if let Some(constant) = map.get("const")
        && constant != value
    {
        return Err(violation(path, format!("must equal {constant}")));
    }
    if let Some(n) = value.as_f64() {
        let bound = |k: &str| map.get(k).and_then(Value::as_f64);
        let checks = [
            (bound("minimum"), n < bound("minimum").unwrap_or(f64::MIN), "at least"),
            (bound("maximum"), n > bound("maximum").unwrap_or(f64::MAX), "at most"),
            (
                bound("exclusiveMinimum"),
                n <= bound("exclusiveMinimum").unwrap_or(f64::MIN),
                "above",
            ),
            (
                bound("exclusiveMaximum"),
                n >= bound("exclusiveMaximum").unwrap_or(f64::MAX),
                "below",
            ),
        ];
        for (limit, broken, word) in checks {
            if let Some(limit) = limit
                && broken
            {
                return Err(violation(path, format!("must be {word} {limit}")));
            }
        }
    }
    let size = |k: &str| map.get(k).and_then(Value::as_u64);
    if let Some(text) = value.as_str() {
        let chars = text.chars().count() as u64;
        if size("minLength").is_some_and(|m| chars < m) || size("maxLength").is_some_and(|m| chars > m) {
            return Err(violation(path, "has a length outside the allowed range"));
        }
    }
    if let Some(list) = value.as_array() {
        let len = list.len() as u64;
        if size("minItems").is_some_and(|m| len < m) || size("maxItems").is_some_and(|m| len > m) {
            return Err(violation(path, "has a number of items outside the allowed range"));
        }
        if let Some(items) = map.get("items") {
            for (i, item) in list.iter().enumerate() {
                validate(items, item, &format!("{path}[{i}]"))?;
            }
        }
    }
    if let Some(object) = value.as_object() {
        if let Some(Value::Array(required)) = map.get("required") {
            for name in required.iter().filter_map(Value::as_str) {
                if !object.contains_key(name) {
                    return Err(violation(&format!("{path}.{name}"), "is required"));
                }
            }
        }
        let props = map.get("properties").and_then(Value::as_object);
        for (name, item) in object {
            let at = format!("{path}.{name}");
            match props.and_then(|p| p.get(name)) {
                Some(sub) => validate(sub, item, &at)?,
                None => {
                    if let Some(extra) = map.get("additionalProperties") {
                        validate(extra, item, &at).map_err(|v| {
                            if extra == &Value::Bool(false) {
                                violation(&at, "is not a property the schema allows")
                            } else {
                                v
                            }
                        })?;
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn schema() -> Value {
        json!({
            "type": "object",
            "required": ["even_number"],
            "properties": {
                "even_number": {"type": "integer", "minimum": 2},
                "label": {"type": "string", "maxLength": 3},
                "tags": {"type": "array", "items": {"enum": ["a", "b"]}}
            }
        })
    }

    #[test]
    fn accepts_valid_and_unnamed_keys() {
        check_schema(&schema(), "input_schema").unwrap();
        validate(&schema(), &json!({"even_number": 4, "other": true}), "context").unwrap();
    }

    #[test]
    fn names_the_field_that_is_wrong() {
        let cases = [
            (json!({}), "context.even_number", "is required"),
            (
                json!({"even_number": "4"}),
                "context.even_number",
                "must be of type integer, not string",
            ),
            (
                json!({"even_number": 2.5}),
                "context.even_number",
                "must be of type integer, not number",
            ),
            (json!({"even_number": 0}), "context.even_number", "must be at least 2"),
            (
                json!({"even_number": 2, "label": "long"}),
                "context.label",
                "has a length outside the allowed range",
            ),
            (
                json!({"even_number": 2, "tags": ["a", "c"]}),
                "context.tags[1]",
                "is not one of the allowed values",
            ),
        ];
        for (value, path, reason) in cases {
            let v = validate(&schema(), &value, "context").unwrap_err();
            assert_eq!((v.path.as_str(), v.reason.as_str()), (path, reason), "{value}");
        }
    }

    #[test]
    fn additional_properties_false_forbids_unnamed_keys() {
        let mut s = schema();
        s["additionalProperties"] = json!(false);
        let v = validate(&s, &json!({"even_number": 2, "x": 1}), "context").unwrap_err();
        assert_eq!(v.path, "context.x");
    }

    #[test]
    fn unsupported_keywords_are_refused_at_registration() {
        let v = check_schema(&json!({"type": "object", "patternProperties": {}}), "input_schema").unwrap_err();
        assert_eq!(v.path, "input_schema.patternProperties");
        let v = check_schema(&json!({"properties": {"a": {"type": "text"}}}), "input_schema").unwrap_err();
        assert_eq!(v.path, "input_schema.properties.a.type");
    }
}
