//! Scrapes a Prometheus endpoint over HTTP and reads its text exposition.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// One sample of the text exposition: name, labels, value.
pub type Series = Vec<(String, BTreeMap<String, String>, f64)>;

/// Parses the Prometheus text format, enough for the names and labels written here (label
/// values hold no `"` or `,`).
pub fn parse(text: &str) -> Series {
    let mut series = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let Some((head, value)) = line.rsplit_once(' ') else {
            panic!("bad line {line:?}");
        };
        let value: f64 = value.parse().unwrap_or_else(|e| panic!("{line:?}: {e}"));
        let (name, labels) = match head.split_once('{') {
            Some((name, rest)) => {
                let rest = rest.strip_suffix('}').unwrap_or(rest);
                let labels = rest
                    .split("\",")
                    .filter(|l| !l.is_empty())
                    .map(|l| {
                        let (k, v) = l.split_once("=\"").unwrap_or_else(|| panic!("{line:?}"));
                        (k.to_owned(), v.trim_end_matches('"').to_owned())
                    })
                    .collect();
                (name, labels)
            }
            None => (head, BTreeMap::new()),
        };
        series.push((name.to_owned(), labels, value));
    }
    series
}

/// The sum of the samples of `name` whose labels include `labels`; `None` if there is none.
pub fn sum(series: &Series, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = series
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| *v)
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}

pub fn get(series: &Series, name: &str, labels: &[(&str, &str)]) -> f64 {
    sum(series, name, labels).unwrap_or_else(|| panic!("no series {name} {labels:?}"))
}

/// GET http://ADDR/metrics over a real connection.
pub async fn scrape(addr: SocketAddr) -> Series {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let response = client
        .get(format!("http://{addr}/metrics").parse().unwrap())
        .await
        .unwrap();
    assert!(response.status().is_success());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    parse(std::str::from_utf8(&body).unwrap())
}
