//! The JSON-lines view of what a transform emitted, shared by
//! `sluice transform test` and `sluice demo` so both print the same shape:
//!
//! ```json
//! {"kind":"message","topic":"iiot/node1/temperature","payload":"27.6","qos":1,"retain":true}
//! {"kind":"point","measurement":"environment","tags":{"node":"node1"},"fields":{"temperature":27.6},"timestamp":null}
//! {"kind":"error","line":3,"reason":"decode_malformed","error":"…"}
//! ```
//!
//! A payload that is valid UTF-8 is shown as `payload`, any other as
//! `payload_base64`.

use base64::Engine as _;
use serde_json::{Map, Value, json};

use crate::output::{FieldRef, MessageRef, PointLike};

/// One message as a JSON object.
pub fn message(m: MessageRef<'_>) -> Value {
    let mut obj = Map::new();
    obj.insert("kind".into(), "message".into());
    obj.insert("topic".into(), m.topic.into());
    match std::str::from_utf8(m.payload) {
        Ok(text) => obj.insert("payload".into(), text.into()),
        Err(_) => obj.insert(
            "payload_base64".into(),
            base64::engine::general_purpose::STANDARD
                .encode(m.payload)
                .into(),
        ),
    };
    obj.insert("qos".into(), m.qos.level().into());
    obj.insert("retain".into(), m.retain.into());
    Value::Object(obj)
}

/// One point as a JSON object. Integers keep their type; non-finite floats
/// (which JSON cannot hold) are shown as strings.
pub fn point(p: &impl PointLike) -> Value {
    let tags: Map<String, Value> = p
        .tags()
        .map(|(k, v)| (k.to_owned(), Value::from(v)))
        .collect();
    let fields: Map<String, Value> = p
        .fields()
        .map(|(k, v)| {
            let value = match v {
                FieldRef::Float(f) if f.is_finite() => json!(f),
                FieldRef::Float(f) => json!(f.to_string()),
                FieldRef::Int(i) => json!(i),
                FieldRef::UInt(u) => json!(u),
                FieldRef::Bool(b) => json!(b),
                FieldRef::Text(s) => json!(s),
            };
            (k.to_owned(), value)
        })
        .collect();
    json!({
        "kind": "point",
        "measurement": p.measurement(),
        "tags": tags,
        "fields": fields,
        "timestamp": p.timestamp_ns(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FieldValue, MqttMessage, Point, Qos};

    #[test]
    fn message_payloads() {
        let mut m = MqttMessage {
            topic: "iiot/node1/temperature".into(),
            payload: b"27.6".to_vec().into(),
            qos: Qos::AtLeastOnce,
            retain: true,
        };
        assert_eq!(
            message(m.as_ref()).to_string(),
            r#"{"kind":"message","topic":"iiot/node1/temperature","payload":"27.6","qos":1,"retain":true}"#
        );
        m.payload = vec![0xff, 0x00].into();
        assert_eq!(message(m.as_ref())["payload_base64"], "/wA=");
        assert!(message(m.as_ref()).get("payload").is_none());
    }

    #[test]
    fn point_fields_keep_types() {
        let p = Point {
            measurement: "m".into(),
            tags: vec![("node".into(), "n1".into())],
            fields: vec![
                ("f".into(), FieldValue::Float(1.5)),
                ("i".into(), FieldValue::Int(-3)),
                ("u".into(), FieldValue::UInt(u64::MAX)),
                ("b".into(), FieldValue::Bool(true)),
                ("s".into(), FieldValue::Text("x".into())),
                ("nan".into(), FieldValue::Float(f64::NAN)),
            ],
            timestamp_ns: Some(5),
        };
        let v = point(&p);
        assert_eq!(v["fields"]["u"], u64::MAX);
        assert_eq!(v["fields"]["i"], -3);
        assert_eq!(v["fields"]["nan"], "NaN");
        assert_eq!(v["tags"]["node"], "n1");
        assert_eq!(v["timestamp"], 5);
    }
}
