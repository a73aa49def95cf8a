//! The compiled `tasker.v1` is tasker-core's orchestration API as
//! WIRE-tasker.md lists it: the same services, RPCs, messages and enums, and
//! spot checks of the numbers, types and presence a generated client relies on.

use std::collections::BTreeMap;

use prost::Message;
use prost_types::{
    DescriptorProto, FileDescriptorSet,
    field_descriptor_proto::{Label, Type},
};

fn tasker() -> Vec<prost_types::FileDescriptorProto> {
    let set = FileDescriptorSet::decode(cairn_proto::FILE_DESCRIPTOR_SET).expect("descriptor set decodes");
    set.file.into_iter().filter(|f| f.package() == "tasker.v1").collect()
}

/// Every message by full name (nested ones as `Outer.Inner`), map entries left out.
fn messages(prefix: &str, list: &[DescriptorProto], out: &mut BTreeMap<String, DescriptorProto>) {
    for m in list {
        if m.options.as_ref().is_some_and(|o| o.map_entry()) {
            continue;
        }
        let name = format!("{prefix}{}", m.name());
        messages(&format!("{name}."), &m.nested_type, out);
        out.insert(name, m.clone());
    }
}

fn all_messages() -> BTreeMap<String, DescriptorProto> {
    let mut out = BTreeMap::new();
    for file in tasker() {
        messages("", &file.message_type, &mut out);
    }
    out
}

/// (number, type, repeated, proto3 optional, type name) of `message.field`.
fn field(message: &str, field: &str) -> (i32, Type, bool, bool, String) {
    let all = all_messages();
    let m = all.get(message).unwrap_or_else(|| panic!("no message {message}"));
    let f = m
        .field
        .iter()
        .find(|f| f.name() == field)
        .unwrap_or_else(|| panic!("no field {message}.{field}"));
    (
        f.number(),
        f.r#type(),
        f.label() == Label::Repeated,
        f.proto3_optional(),
        f.type_name().to_owned(),
    )
}

#[test]
fn the_services_and_rpcs_are_tasker_cores() {
    let mut rpcs = Vec::new();
    for file in tasker() {
        for service in &file.service {
            for method in &service.method {
                rpcs.push((
                    format!("/tasker.v1.{}/{}", service.name(), method.name()),
                    method.server_streaming(),
                    method.client_streaming(),
                ));
            }
        }
    }
    rpcs.sort();
    assert_eq!(rpcs.len(), 26, "{rpcs:?}");
    let services: std::collections::BTreeSet<&str> =
        rpcs.iter().map(|(path, ..)| path.split('/').nth(1).unwrap()).collect();
    assert_eq!(
        services.into_iter().collect::<Vec<_>>(),
        [
            "tasker.v1.AnalyticsService",
            "tasker.v1.ConfigService",
            "tasker.v1.DlqService",
            "tasker.v1.HealthService",
            "tasker.v1.StepService",
            "tasker.v1.TaskService",
            "tasker.v1.TemplateService",
        ]
    );
    let streaming: Vec<&str> = rpcs.iter().filter(|r| r.1).map(|r| r.0.as_str()).collect();
    assert_eq!(streaming, ["/tasker.v1.TaskService/StreamTaskStatus"]);
    assert!(rpcs.iter().all(|r| !r.2), "no client streaming");
}

#[test]
fn messages_and_enums_are_tasker_cores_with_their_numbers_and_presence() {
    let all = all_messages();
    assert_eq!(all.len(), 94, "{:?}", all.keys().collect::<Vec<_>>());
    let enums: usize = tasker().iter().map(|f| f.enum_type.len()).sum::<usize>()
        + all.values().map(|m| m.enum_type.len()).sum::<usize>();
    assert_eq!(enums, 10);
    assert!(
        all["TaskStatusUpdate"]
            .enum_type
            .iter()
            .any(|e| e.name() == "UpdateType"),
        "UpdateType stays nested"
    );

    assert_eq!(
        field("Task", "correlation_id"),
        (15, Type::String, false, false, String::new())
    );
    assert_eq!(
        field("Task", "completed_at"),
        (8, Type::Message, false, true, ".google.protobuf.Timestamp".into())
    );
    assert_eq!(field("Task", "completion_percentage").0, 25);
    assert_eq!(
        field("Step", "backoff_request_seconds"),
        (19, Type::Int32, false, true, String::new())
    );
    assert_eq!(
        field("ListTasksRequest", "states"),
        (4, Type::Enum, true, false, ".tasker.v1.TaskState".into())
    );
    assert_eq!(
        field("PaginationRequest", "limit"),
        (1, Type::Int32, false, true, String::new())
    );
    assert_eq!(
        field("CreateTaskRequest", "context"),
        (4, Type::Message, false, false, ".google.protobuf.Struct".into())
    );
    assert_eq!(
        field("TaskStatusUpdate", "update_type"),
        (
            1,
            Type::Enum,
            false,
            false,
            ".tasker.v1.TaskStatusUpdate.UpdateType".into()
        )
    );
    assert_eq!(field("TaskSummaryTemplateStep", "max_attempts").1, Type::Uint32);
    assert_eq!(field("Step", "max_attempts").1, Type::Int32);
    assert_eq!(
        field("StepAuditRecord", "from_state"),
        (12, Type::Enum, false, true, ".tasker.v1.StepState".into())
    );
    assert_eq!(field("GetBottleneckAnalysisResponse", "resource_utilization").0, 3);
    assert_eq!(
        field("HealthInfo", "pool_utilization"),
        (7, Type::Message, false, true, ".tasker.v1.PoolUtilizationInfo".into())
    );
    assert!(field("ErrorDetail", "metadata").2, "the one map");

    // Generated code: proto3 optional scalars are Options, so "unset" differs from 0.
    let request = cairn_proto::tasker::v1::PaginationRequest {
        limit: None,
        offset: Some(0),
    };
    let bytes = request.encode_to_vec();
    assert_eq!(
        bytes,
        [0x10, 0x00],
        "an explicit 0 is on the wire, an unset field is not"
    );
}
