//! Unit tests of `traces.rs`, in a file of their own to keep that one short.

use super::*;

fn wanted_with(vars: &[(&str, &str)]) -> Result<bool, TracesError> {
    wanted(|name| {
        vars.iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| (*value).to_owned())
            .filter(|value| !value.is_empty())
    })
}

#[test]
fn traces_are_on_only_with_an_endpoint_and_not_disabled() {
    assert!(!wanted_with(&[]).unwrap());
    assert!(!wanted_with(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "")]).unwrap());
    let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
    assert!(wanted_with(&[endpoint]).unwrap());
    let traces_endpoint = (
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "http://c:4318/v1/traces",
    );
    assert!(wanted_with(&[traces_endpoint]).unwrap());
    assert!(!wanted_with(&[endpoint, ("OTEL_SDK_DISABLED", "true")]).unwrap());
    let protobuf = ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf");
    assert!(wanted_with(&[endpoint, protobuf]).unwrap());
}

#[test]
fn what_cannot_be_exported_is_refused_at_startup() {
    let https = ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318");
    assert!(matches!(
        wanted_with(&[https]),
        Err(TracesError::NotPlainHttp(url)) if url == "https://collector:4318"
    ));
    let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
    for variable in [
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    ] {
        assert!(matches!(
            wanted_with(&[endpoint, (variable, "grpc")]),
            Err(TracesError::UnsupportedProtocol { value, .. }) if value == "grpc"
        ));
    }
    // Off is off, whatever else is set.
    assert!(!wanted_with(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).unwrap());
}
