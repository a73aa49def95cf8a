//! JSON and protobuf's `Struct`, as Cairn's tasker-compatible API carries
//! JSON: only an object can be a `Struct`; numbers travel as doubles (whole
//! ones come back as integers); NaN and infinities become null.

use prost_types::{ListValue, Struct, value::Kind};
use serde_json::{Map, Number, Value};

/// A JSON value as a protobuf value.
pub fn to_value(v: &Value) -> prost_types::Value {
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(list) => Kind::ListValue(ListValue {
            values: list.iter().map(to_value).collect(),
        }),
        Value::Object(map) => Kind::StructValue(to_struct_map(map)),
    };
    prost_types::Value { kind: Some(kind) }
}

pub fn to_struct_map(map: &Map<String, Value>) -> Struct {
    Struct {
        fields: map.iter().map(|(k, v)| (k.clone(), to_value(v))).collect(),
    }
}

/// A JSON object as a `Struct`; `None` for anything else.
pub fn to_struct(v: &Value) -> Option<Struct> {
    v.as_object().map(to_struct_map)
}

/// Stored JSON text as a `Struct` (unset when not an object or unparsable).
pub fn text_to_struct(text: Option<&str>) -> Option<Struct> {
    text.and_then(|t| serde_json::from_str::<Value>(t).ok())
        .as_ref()
        .and_then(to_struct)
}

/// A protobuf value as JSON: whole doubles become integers again; NaN and
/// infinities become null.
pub fn from_value(v: &prost_types::Value) -> Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::NumberValue(n)) => {
            if !n.is_finite() {
                Value::Null
            } else if n.fract() == 0.0 && n.abs() < 9.007_199_254_740_992e15 {
                #[allow(clippy::cast_possible_truncation)]
                Value::Number(Number::from(*n as i64))
            } else {
                Number::from_f64(*n).map_or(Value::Null, Value::Number)
            }
        }
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(from_value).collect()),
        Some(Kind::StructValue(s)) => from_struct(s),
    }
}

/// A `Struct` as a JSON object.
pub fn from_struct(s: &Struct) -> Value {
    Value::Object(s.fields.iter().map(|(k, v)| (k.clone(), from_value(v))).collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    #[test]
    fn json_objects_round_trip_through_struct() {
        let v = json!({"a": 1, "b": [true, null, "x", 2.5], "c": {"d": -3}});
        assert_eq!(from_struct(&to_struct(&v).unwrap()), v);
        assert!(to_struct(&json!(4)).is_none());
        assert!(to_struct(&json!([1])).is_none());
    }

    #[test]
    fn non_finite_numbers_become_null() {
        let v = prost_types::Value {
            kind: Some(Kind::NumberValue(f64::NAN)),
        };
        assert_eq!(from_value(&v), Value::Null);
    }
}
