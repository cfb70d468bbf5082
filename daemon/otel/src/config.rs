//! `config` — the standard `OTEL_*` variables, read from the daemon's own
//! environment with a run's client environment laid over it.
//!
//! Owns: which variables count (`OTEL_SDK_DISABLED`,
//! `OTEL_EXPORTER_OTLP_{,TRACES_,METRICS_}ENDPOINT`, `…_PROTOCOL`,
//! `…_HEADERS`, `…_TIMEOUT`, `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`) and what they mean, per the OTel
//! specification's exporter and SDK configuration.
//! Never: reads the process environment itself (callers pass maps), or
//! logs a header's value (they carry credentials).

use std::collections::BTreeMap;
use std::time::Duration;

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

/// Where one signal goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub protocol: Protocol,
    /// The full URL (for HTTP, with its `/v1/<signal>` path).
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
}

/// One run's export settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub traces: Option<Target>,
    pub metrics: Option<Target>,
    pub service_name: String,
    pub resource: Vec<(String, String)>,
}

/// The default export timeout (`OTEL_EXPORTER_OTLP_TIMEOUT`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

fn truthy(v: Option<&String>) -> bool {
    v.is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// `k1=v1,k2=v2` with percent-decoded values (the W3C baggage format the
/// spec uses for headers and resource attributes); bad pairs are skipped.
pub fn pairs(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            let k = k.trim();
            (!k.is_empty()).then(|| (k.to_string(), percent_decode(v.trim())))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether the variables ask for any export (the engine's tracing policy).
pub fn wanted(env: &BTreeMap<String, String>) -> bool {
    !truthy(env.get("OTEL_SDK_DISABLED"))
        && ["", "TRACES_"].iter().any(|s| {
            env.get(&format!("OTEL_EXPORTER_OTLP_{s}ENDPOINT"))
                .is_some_and(|v| !v.trim().is_empty())
        })
}

/// The settings of `base` (the daemon's) overlaid by `run` (the client's).
pub fn merged(
    base: &BTreeMap<String, String>,
    run: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut m = base.clone();
    m.extend(run.iter().map(|(k, v)| (k.clone(), v.clone())));
    m
}

fn target(env: &BTreeMap<String, String>, signal: &str) -> Result<Option<Target>, String> {
    let sig = signal.to_ascii_uppercase();
    let get = |name: &str| {
        env.get(&format!("OTEL_EXPORTER_OTLP_{sig}_{name}"))
            .or_else(|| env.get(&format!("OTEL_EXPORTER_OTLP_{name}")))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let protocol = match get("PROTOCOL").as_deref() {
        None | Some("http/protobuf") => Protocol::HttpProtobuf,
        Some("grpc") => Protocol::Grpc,
        Some(other) => {
            return Err(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={other} is not supported (use grpc or http/protobuf)"
            ));
        }
    };
    let specific = env
        .get(&format!("OTEL_EXPORTER_OTLP_{sig}_ENDPOINT"))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty());
    let url = match (specific, env.get("OTEL_EXPORTER_OTLP_ENDPOINT")) {
        (Some(u), _) => u,
        (None, Some(base)) if !base.trim().is_empty() => match protocol {
            Protocol::Grpc => base.trim().to_string(),
            Protocol::HttpProtobuf => {
                format!("{}/v1/{signal}", base.trim().trim_end_matches('/'))
            }
        },
        _ => return Ok(None),
    };
    if !url.starts_with("http://") {
        return Err(format!(
            "the OTLP endpoint {url} is not supported: vxd exports over plain http:// only (put a local collector in front of a TLS endpoint)"
        ));
    }
    let timeout = get("TIMEOUT")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_TIMEOUT);
    Ok(Some(Target {
        protocol,
        url,
        headers: get("HEADERS").map(|h| pairs(&h)).unwrap_or_default(),
        timeout,
    }))
}

impl Config {
    /// The settings the variables give; `Ok(None)` when nothing is
    /// exported (no endpoint, or `OTEL_SDK_DISABLED=true`).
    pub fn from_env(env: &BTreeMap<String, String>) -> Result<Option<Config>, String> {
        if !wanted(env) {
            return Ok(None);
        }
        let traces = target(env, "traces")?;
        let metrics = target(env, "metrics")?;
        let mut resource = env
            .get("OTEL_RESOURCE_ATTRIBUTES")
            .map(|r| pairs(r))
            .unwrap_or_default();
        let service_name = env
            .get("OTEL_SERVICE_NAME")
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .or_else(|| {
                resource
                    .iter()
                    .find(|(k, _)| k == "service.name")
                    .map(|(_, v)| v.clone())
            })
            .unwrap_or_else(|| "vx".to_string());
        resource.retain(|(k, _)| k != "service.name");
        Ok(Some(Config {
            traces,
            metrics,
            service_name,
            resource,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn endpoints_follow_the_spec() {
        // (variables, traces URL, metrics URL)
        type Case<'a> = (&'a [(&'a str, &'a str)], Option<&'a str>, Option<&'a str>);
        let cases: &[Case] = &[
            (&[], None, None),
            (
                &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")],
                Some("http://c:4318/v1/traces"),
                Some("http://c:4318/v1/metrics"),
            ),
            (
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ],
                Some("http://c:4317"),
                Some("http://c:4317"),
            ),
            (
                &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:1/x")],
                Some("http://t:1/x"),
                None,
            ),
            (
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                    ("OTEL_SDK_DISABLED", "TRUE"),
                ],
                None,
                None,
            ),
        ];
        for (vars, t, m) in cases {
            let c = Config::from_env(&env(vars)).expect("valid");
            let url = |x: Option<&Target>| x.map(|x| x.url.clone());
            assert_eq!(
                c.as_ref().and_then(|c| url(c.traces.as_ref())).as_deref(),
                *t,
                "{vars:?}"
            );
            assert_eq!(
                c.as_ref().and_then(|c| url(c.metrics.as_ref())).as_deref(),
                *m,
                "{vars:?}"
            );
        }
    }

    #[test]
    fn bad_settings_are_errors_that_name_the_variable() {
        let e = Config::from_env(&env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:1"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ]))
        .expect_err("json is refused");
        assert!(e.contains("OTEL_EXPORTER_OTLP_PROTOCOL"), "{e}");
        let e = Config::from_env(&env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:1")]))
            .expect_err("tls is refused");
        assert!(e.contains("https://c:1"), "{e}");
    }

    #[test]
    fn headers_resource_and_service_name() {
        let c = Config::from_env(&env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:1"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "a=1, b=x%20y,bad"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.name=ci,deployment.environment=dev",
            ),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "250"),
        ]))
        .expect("valid")
        .expect("on");
        let t = c.traces.expect("traces");
        assert_eq!(
            t.headers,
            vec![("a".into(), "1".into()), ("b".into(), "x y".into())]
        );
        assert_eq!(t.timeout, Duration::from_millis(250));
        assert_eq!(c.service_name, "ci");
        assert_eq!(
            c.resource,
            vec![("deployment.environment".into(), "dev".into())]
        );
        let run = env(&[("OTEL_SERVICE_NAME", "mine")]);
        let base = env(&[("OTEL_SERVICE_NAME", "daemon"), ("X", "1")]);
        assert_eq!(merged(&base, &run)["OTEL_SERVICE_NAME"], "mine");
    }
}
